//! `run`: any command as the workload (redis-benchmark, fio, a sqlite script…).
//!
//! Its stdout and stderr are read line by line: a line that reports a rate
//! (see [`crate::tool_output`]) becomes an `OPS` line, every other line an
//! `INFO` line, and the end of the command an `EXIT` line. The output ends,
//! and `EXIT` is written, once the command and everything that inherited its
//! stdout or stderr have closed them.

use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::Instant;

use crate::convert::saturating_u64;
use crate::protocol::{EventWriter, GuestEvent};
use crate::tool_output::{parse_rate, LineSplitter};

/// Exit code reported when the command cannot be started, as a shell does.
const NOT_STARTED: i32 = 127;

/// Runs `command` (program then arguments) to its end; returns its exit code.
pub fn run<W: Write>(command: &[String], out: &mut EventWriter<W>) -> io::Result<i32> {
    let Some((program, args)) = command.split_first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command to run",
        ));
    };
    let spawned = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            out.info(format!("cannot start {program}: {e}"))?;
            out.emit(&GuestEvent::Exit { code: NOT_STARTED })?;
            return Ok(NOT_STARTED);
        }
    };
    let name = Path::new(program)
        .file_name()
        .map_or_else(|| program.clone(), |n| n.to_string_lossy().into_owned());
    out.emit(&GuestEvent::Ready { name })?;

    let (lines, received) = mpsc::channel();
    let readers = [
        child.stdout.take().map(|s| spawn_reader(s, lines.clone())),
        child.stderr.take().map(|s| spawn_reader(s, lines.clone())),
    ];
    // Only the readers may hold senders, so the loop ends when both streams close.
    drop(lines);

    let mut window_start = Instant::now();
    for line in received {
        match parse_rate(&line) {
            Some(rate) => {
                // A tool reports a rate; OPS wants a count, so spread the
                // rate over the time since the previous report.
                let now = Instant::now();
                let window = now - window_start;
                out.emit(&GuestEvent::Ops {
                    ops: saturating_u64((rate * window.as_secs_f64()).round()),
                    elapsed_us: u64::try_from(window.as_micros()).unwrap_or(u64::MAX),
                })?;
                window_start = now;
            }
            None => out.info(line)?,
        }
    }
    for reader in readers.into_iter().flatten() {
        reader.join().expect("a line reader panicked");
    }
    let code = exit_code(child.wait()?);
    out.emit(&GuestEvent::Exit { code })?;
    Ok(code)
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    lines: Sender<String>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || forward_lines(stream, &lines))
}

/// Sends every line of `stream` until it ends; a read error ends it too,
/// since the command's exit status is what gets reported.
fn forward_lines(mut stream: impl Read, lines: &Sender<String>) {
    let mut splitter = LineSplitter::default();
    let mut buffer = [0u8; 4096];
    // A send fails only when the receiver is gone, and then nobody wants the line.
    let mut send = |line| {
        let _ = lines.send(line);
    };
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => splitter.feed(&buffer[..n], &mut send),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    splitter.finish(&mut send);
}

/// The exit code, or 128 + signal number when killed, as a shell reports it.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_line;

    fn run_shell(script: &str) -> (i32, Vec<GuestEvent>) {
        let mut out = EventWriter::new(Vec::new());
        let command = ["sh", "-c", script].map(String::from);
        let code = run(&command, &mut out).unwrap();
        let events = String::from_utf8_lossy(out.sink())
            .lines()
            .map(|l| parse_line(l).expect("protocol line"))
            .collect();
        (code, events)
    }

    #[test]
    fn output_becomes_info_and_ops_and_the_exit_code_is_reported() {
        let (code, events) = run_shell(
            "echo hello; printf 'SET: rps=1000.0\\rSET: rps=2000.0\\r'; echo oops >&2; exit 3",
        );
        assert_eq!(code, 3);
        assert_eq!(
            events.first(),
            Some(&GuestEvent::Ready { name: "sh".into() })
        );
        assert_eq!(events.last(), Some(&GuestEvent::Exit { code: 3 }));
        for text in ["hello", "oops"] {
            assert!(
                events.contains(&GuestEvent::Info { text: text.into() }),
                "{events:?}"
            );
        }
        let ops = events
            .iter()
            .filter(|e| matches!(e, GuestEvent::Ops { .. }))
            .count();
        assert_eq!(ops, 2, "{events:?}");
    }

    #[test]
    fn ops_count_is_the_rate_over_the_window() {
        let (_, events) = run_shell("sleep 0.2; echo '500 ops/s'");
        let Some(GuestEvent::Ops { ops, elapsed_us }) =
            events.iter().find(|e| matches!(e, GuestEvent::Ops { .. }))
        else {
            panic!("no OPS in {events:?}");
        };
        assert!(*elapsed_us >= 200_000, "{elapsed_us}");
        let rate = *ops as f64 / (*elapsed_us as f64 / 1e6);
        assert!((rate - 500.0).abs() < 10.0, "{rate}");
    }

    #[test]
    fn a_killed_command_reports_128_plus_the_signal() {
        let (code, events) = run_shell("kill -9 $$");
        assert_eq!(code, 137);
        assert_eq!(events.last(), Some(&GuestEvent::Exit { code: 137 }));
    }

    #[test]
    fn a_missing_program_reports_127() {
        let mut out = EventWriter::new(Vec::new());
        let code = run(&["/nonexistent/tool".to_owned()], &mut out).unwrap();
        assert_eq!(code, 127);
        let text = String::from_utf8_lossy(out.sink()).into_owned();
        assert!(
            text.starts_with("INFO cannot start /nonexistent/tool: "),
            "{text}"
        );
        assert!(text.ends_with("EXIT 127\n"), "{text}");
    }
}
