//! Building QEMU's command line and owning the running process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{QemuError, QmpClient, SerialCapture};

/// How guest instructions run: TCG works everywhere, KVM needs a real host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    #[default]
    Tcg,
    Kvm,
}

impl Accelerator {
    fn as_arg(self) -> &'static str {
        match self {
            Accelerator::Tcg => "tcg",
            Accelerator::Kvm => "kvm",
        }
    }
}

/// Where guest RAM lives. Both backends are the memory backend `ram0`, and
/// QEMU names the RAM block in its migration stream after the backend, so a
/// VM with one kind migrates into a VM with the other (the lab's sources keep
/// their RAM in a file for every method; QEMU's destinations stay anonymous).
#[derive(Debug, Clone)]
pub enum RamBackend {
    /// QEMU's own anonymous memory: what a plain QEMU migration uses.
    Anonymous,
    /// A shared-memory file that an mllm agent maps too (`share=on`).
    SharedFile(PathBuf),
}

/// How long QEMU's NBD client holds the guest's disk requests after it lost
/// its server, reconnecting meanwhile: an agent that restarts serves the
/// disk again within it, and the guest sees a slow disk instead of I/O
/// errors. Past it the requests fail.
pub const NBD_RECONNECT_DELAY_S: u32 = 120;

/// Where the guest's virtio disk (raw) comes from.
#[derive(Debug, Clone)]
pub enum DiskAttachment {
    /// A raw image file QEMU opens itself: what QEMU's own storage
    /// migration (blockdev-mirror) works with.
    Image(PathBuf),
    /// An NBD export served on a unix socket, by an mllm agent that sees
    /// every request. Guest discards reach it as TRIM (`discard=unmap`).
    Nbd { socket: PathBuf, export: String },
}

/// How the guest starts.
#[derive(Debug, Clone)]
pub enum Boot {
    /// QEMU loads a Linux kernel (and initramfs) itself: the lab's guest.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// The firmware (SeaBIOS) boots from the disk, as a cloud image expects:
    /// the disk must be attached, and is the first boot device.
    Firmware,
}

/// Everything needed to start one QEMU process.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub name: String,
    pub binary: PathBuf,
    pub accelerator: Accelerator,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub ram: RamBackend,
    pub boot: Boot,
    pub disk: Option<DiskAttachment>,
    /// Named serial ports, in order (ttyS0, ttyS1, ...).
    pub serial_ports: Vec<String>,
    /// Start with `-incoming defer`, waiting for a migration stream.
    pub incoming: bool,
    /// Holds QMP and serial sockets, logs, and QEMU's stderr.
    pub run_dir: PathBuf,
    pub env: Vec<(String, String)>,
}

impl QemuConfig {
    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join(format!("{}.qmp", self.name))
    }

    fn serial_socket(&self, port: &str) -> PathBuf {
        self.run_dir.join(format!("{}.{port}.sock", self.name))
    }

    /// The serial log file of `port`, written as lines arrive.
    pub fn serial_log(&self, port: &str) -> PathBuf {
        self.run_dir.join(format!("{}.{port}.log", self.name))
    }

    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-name".into(),
            // Named threads (`CPU 0/TCG`, `CPU 0/KVM`): what an operator's
            // pinning and `top -H` go by.
            format!("{},debug-threads=on", self.name),
            "-accel".into(),
            self.accelerator.as_arg().into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            // A panicking guest exits instead of rebooting, so a broken
            // destination cannot look alive.
            "-no-reboot".into(),
            "-smp".into(),
            self.vcpus.to_string(),
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp_socket().display()),
        ];
        if let Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } = &self.boot
        {
            args.push("-kernel".into());
            args.push(kernel.display().to_string());
            if let Some(initrd) = initrd {
                args.push("-initrd".into());
                args.push(initrd.display().to_string());
            }
            args.push("-append".into());
            args.push(cmdline.clone());
        }
        let backend = match &self.ram {
            RamBackend::Anonymous => {
                format!("memory-backend-ram,id=ram0,size={}M", self.memory_mib)
            }
            RamBackend::SharedFile(path) => format!(
                "memory-backend-file,id=ram0,size={}M,mem-path={},share=on",
                self.memory_mib,
                path.display()
            ),
        };
        args.push("-object".into());
        args.push(backend);
        args.push("-machine".into());
        args.push("q35,memory-backend=ram0".into());
        for port in &self.serial_ports {
            args.push("-chardev".into());
            args.push(format!(
                "socket,id=ser-{port},path={},server=on,wait=off",
                self.serial_socket(port).display()
            ));
            args.push("-serial".into());
            args.push(format!("chardev:ser-{port}"));
        }
        if let Some(disk) = &self.disk {
            args.push("-blockdev".into());
            args.push(match disk {
                DiskAttachment::Image(image) => format!(
                    "driver=file,filename={},node-name=disk0-file,discard=unmap",
                    image.display()
                ),
                DiskAttachment::Nbd { socket, export } => format!(
                    "driver=nbd,server.type=unix,server.path={},export={export},\
                     reconnect-delay={NBD_RECONNECT_DELAY_S},node-name=disk0-file,discard=unmap",
                    socket.display()
                ),
            });
            args.push("-blockdev".into());
            args.push("driver=raw,file=disk0-file,node-name=disk0,discard=unmap".into());
            let io_thread = match disk {
                // The NBD client runs on an I/O thread of its own instead of
                // in the main loop, under the lock a TCG vCPU needs for each
                // exit: there, receiving every read's data held the vCPU up
                // (sequential 1 MiB reads at 0.76 of the image's own
                // throughput; on the I/O thread about 1.0, docs/disk-io.md).
                DiskAttachment::Nbd { .. } => {
                    args.push("-object".into());
                    args.push("iothread,id=disk0-io".into());
                    ",iothread=disk0-io"
                }
                // Not for an image QEMU opens itself: with the file on an I/O
                // thread, QEMU 10.0 under TCG lost a request and hung the
                // guest's disk in 2 of 4 boots of `mllm lab disk-io` (in
                // about 1 of 10 on the main loop), and its throughput was
                // the same either way.
                DiskAttachment::Image(_) => "",
            };
            args.push("-device".into());
            // -nodefaults leaves SeaBIOS no boot device unless one is named.
            let boot_index = match self.boot {
                Boot::Kernel { .. } => "",
                Boot::Firmware => ",bootindex=0",
            };
            args.push(format!(
                "virtio-blk-pci,drive=disk0,id=vdisk0{io_thread}{boot_index}"
            ));
        }
        if self.incoming {
            args.push("-incoming".into());
            args.push("defer".into());
        }
        args
    }
}

/// A running QEMU; killed when dropped so a failed run never leaks VMs,
/// unless it was told to stay ([`QemuProcess::leave_running`]).
#[derive(Debug)]
pub struct QemuProcess {
    pub config: QemuConfig,
    process: Process,
    pub qmp: QmpClient,
    serials: Vec<(String, SerialCapture)>,
    left_running: AtomicBool,
}

/// How this process holds the QEMU process.
#[derive(Debug)]
enum Process {
    /// Started here: our child.
    Child(Child),
    /// Started by an earlier process (an agent that restarted since), by pid:
    /// not our child, so it cannot be waited for.
    Adopted(u32),
}

impl QemuProcess {
    pub fn start(config: QemuConfig) -> Result<QemuProcess, QemuError> {
        check_version(&config.binary)?;
        std::fs::create_dir_all(&config.run_dir).map_err(QemuError::Spawn)?;
        let stderr_path = config.run_dir.join(format!("{}.stderr", config.name));
        let stderr = std::fs::File::create(&stderr_path).map_err(QemuError::Spawn)?;
        tracing::info!(name = %config.name, args = ?config.args(), "starting QEMU");
        let mut child = Command::new(&config.binary)
            .args(config.args())
            .envs(config.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(QemuError::Spawn)?;
        let startup = (|| {
            let qmp = wait_for_qmp(&config, &mut child, &stderr_path)?;
            let mut serials = Vec::new();
            for port in &config.serial_ports {
                let capture = SerialCapture::start(
                    &config.serial_socket(port),
                    &config.serial_log(port),
                    Duration::from_secs(10),
                )?;
                serials.push((port.clone(), capture));
            }
            Ok((qmp, serials))
        })();
        match startup {
            Ok((qmp, serials)) => Ok(QemuProcess {
                config,
                process: Process::Child(child),
                qmp,
                serials,
                left_running: AtomicBool::new(false),
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Takes over a QEMU started earlier with `config` by another process
    /// (pid `pid`): connects to its QMP socket and serial ports again. The
    /// caller has made sure `pid` is that QEMU.
    pub fn adopt(config: QemuConfig, pid: u32) -> Result<QemuProcess, QemuError> {
        let qmp = QmpClient::connect(&config.qmp_socket(), Duration::from_secs(10))?;
        let mut serials = Vec::new();
        for port in &config.serial_ports {
            let capture = SerialCapture::start(
                &config.serial_socket(port),
                &config.serial_log(port),
                Duration::from_secs(10),
            )?;
            serials.push((port.clone(), capture));
        }
        Ok(QemuProcess {
            config,
            process: Process::Adopted(pid),
            qmp,
            serials,
            left_running: AtomicBool::new(false),
        })
    }

    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Child(child) => child.id(),
            Process::Adopted(pid) => *pid,
        }
    }

    /// The host thread ids of the VM's vCPUs (QMP `query-cpus-fast`), for
    /// pinning them.
    pub fn vcpu_threads(&self) -> Result<Vec<u32>, QemuError> {
        let cpus = self.qmp.execute("query-cpus-fast", serde_json::json!({}))?;
        cpus.as_array()
            .into_iter()
            .flatten()
            .map(|cpu| {
                cpu["thread-id"]
                    .as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| {
                        QemuError::QmpProtocol(format!(
                            "query-cpus-fast gave a vCPU without a thread id: {cpu}"
                        ))
                    })
            })
            .collect()
    }

    /// Dropping this no longer kills QEMU: the guest outlives this process
    /// (an agent that shuts down leaves its VMs running for its successor).
    pub fn leave_running(&self) {
        self.left_running.store(true, Ordering::SeqCst);
    }

    pub fn serial(&self, port: &str) -> &SerialCapture {
        &self
            .serials
            .iter()
            .find(|(name, _)| name == port)
            .unwrap_or_else(|| panic!("no serial port named {port}"))
            .1
    }

    /// True while the QEMU process has not exited.
    pub fn is_alive(&mut self) -> bool {
        match &mut self.process {
            Process::Child(child) => matches!(child.try_wait(), Ok(None)),
            Process::Adopted(pid) => process_exists(*pid),
        }
    }

    /// QMP `quit`, then a kill if QEMU does not exit promptly.
    pub fn shutdown(mut self) {
        let _ = self.qmp.execute("quit", serde_json::json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.is_alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if self.left_running.load(Ordering::SeqCst) {
            return;
        }
        match &mut self.process {
            Process::Child(child) => {
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                }
                let _ = child.wait();
            }
            Process::Adopted(pid) => {
                if let Ok(pid) = libc::pid_t::try_from(*pid) {
                    // SAFETY: kill(2) has no memory effects; `pid` is the
                    // adopted QEMU, checked by the adopter.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

/// Whether a process `pid` exists (a zombie counts as gone).
fn process_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which ends with the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn wait_for_qmp(
    config: &QemuConfig,
    child: &mut Child,
    stderr_path: &Path,
) -> Result<QmpClient, QemuError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let socket = config.qmp_socket();
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(QemuError::EarlyExit {
                status: status.to_string(),
                stderr: std::fs::read_to_string(stderr_path).unwrap_or_default(),
            });
        }
        if Instant::now() > deadline {
            return Err(QemuError::Timeout {
                what: format!("QMP socket {}", socket.display()),
                seconds: 20,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    QmpClient::connect(&socket, Duration::from_secs(10))
}

/// Refuses a missing QEMU, or one older than 10.0 (7.2 loses dirty pages under TCG).
pub fn check_version(binary: &Path) -> Result<(), QemuError> {
    let not_installed = || QemuError::NotInstalled {
        binary: binary.display().to_string(),
    };
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|_| not_installed())?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .ok_or_else(not_installed)?;
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(not_installed)?;
    if major < 10 {
        return Err(QemuError::TooOld {
            binary: binary.display().to_string(),
            found: version.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_names_the_install_command() {
        let err = check_version(Path::new("/nonexistent/qemu-system-x86_64")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("not found"), "{text}");
        assert!(text.contains("install-deps.sh"), "{text}");
    }

    #[test]
    fn shared_ram_is_backed_by_the_named_file() {
        let config = QemuConfig {
            name: "src".into(),
            binary: "qemu-system-x86_64".into(),
            accelerator: Accelerator::Kvm,
            memory_mib: 256,
            vcpus: 1,
            ram: RamBackend::SharedFile("/dev/shm/x".into()),
            boot: Boot::Kernel {
                kernel: "k".into(),
                initrd: Some("i".into()),
                cmdline: "console=ttyS0".into(),
            },
            disk: None,
            serial_ports: vec!["console".into()],
            incoming: true,
            run_dir: "/tmp/r".into(),
            env: vec![],
        };
        let args = config.args().join(" ");
        assert!(args.contains("-accel kvm"));
        assert!(args.contains("memory-backend-file,id=ram0,size=256M,mem-path=/dev/shm/x,share=on"));
        assert!(args.contains("q35,memory-backend=ram0"));
        assert!(args.ends_with("-incoming defer"));
    }

    #[test]
    fn anonymous_ram_is_the_same_backend_so_either_kind_migrates_into_the_other() {
        let config = QemuConfig {
            name: "dst".into(),
            binary: "qemu-system-x86_64".into(),
            accelerator: Accelerator::Tcg,
            memory_mib: 256,
            vcpus: 1,
            ram: RamBackend::Anonymous,
            boot: Boot::Kernel {
                kernel: "k".into(),
                initrd: Some("i".into()),
                cmdline: "console=ttyS0".into(),
            },
            disk: None,
            serial_ports: vec![],
            incoming: true,
            run_dir: "/tmp/r".into(),
            env: vec![],
        };
        let args = config.args().join(" ");
        assert!(args.contains("memory-backend-ram,id=ram0,size=256M"));
        assert!(args.contains("q35,memory-backend=ram0"));
    }

    #[test]
    fn firmware_boot_starts_from_the_disk_without_a_kernel() {
        let config = QemuConfig {
            name: "cloud".into(),
            binary: "qemu-system-x86_64".into(),
            accelerator: Accelerator::Tcg,
            memory_mib: 256,
            vcpus: 1,
            ram: RamBackend::Anonymous,
            boot: Boot::Firmware,
            disk: Some(DiskAttachment::Nbd {
                socket: "/tmp/r/disk.sock".into(),
                export: "disk0".into(),
            }),
            serial_ports: vec![],
            incoming: false,
            run_dir: "/tmp/r".into(),
            env: vec![],
        };
        let args = config.args();
        for flag in ["-kernel", "-initrd", "-append"] {
            assert!(!args.iter().any(|a| a == flag), "{flag} in {args:?}");
        }
        assert!(
            args.contains(
                &"virtio-blk-pci,drive=disk0,id=vdisk0,iothread=disk0-io,bootindex=0".to_owned()
            ),
            "{args:?}"
        );
    }
}
