//! A suite: several scenarios run one after another, every method of each,
//! scored together (`mllm lab suite`).
//!
//! A suite takes an hour or more, so it is resumable: with `resume`, a
//! method whose `result.json` is already in the output directory is read
//! back instead of run again, and the scoreboard is rewritten after every
//! run, so an interrupted suite still leaves a scoreboard of what it did.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::image::GuestImage;
use crate::result::RunResult;
use crate::run::run_method;
use crate::scenario::Scenario;

/// `scenarios/suite.toml`: which scenario files, in which order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub name: String,
    /// Scenario files, relative to the suite file.
    pub scenarios: Vec<PathBuf>,
}

impl Suite {
    /// Reads the suite and every scenario it names, so that a typo fails
    /// before an hour of runs rather than in the middle of them.
    pub fn load(path: &Path) -> Result<(Suite, Vec<Scenario>)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the suite {}", path.display()))?;
        let suite: Suite = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid suite", path.display()))?;
        if suite.scenarios.is_empty() {
            bail!("{}: `scenarios` is empty", path.display());
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut scenarios = Vec::new();
        for file in &suite.scenarios {
            let scenario = Scenario::load(&base.join(file))
                .with_context(|| format!("in the suite {}", path.display()))?;
            if scenarios.iter().any(|s: &Scenario| s.name == scenario.name) {
                bail!(
                    "{}: two scenarios are named {:?}; their results would share a directory",
                    path.display(),
                    scenario.name
                );
            }
            scenarios.push(scenario);
        }
        Ok((suite, scenarios))
    }
}

/// Keeps only the scenarios named in `only` (all when empty); an unknown
/// name is an error that lists the known ones.
pub fn select(scenarios: Vec<Scenario>, only: &[String]) -> Result<Vec<Scenario>> {
    if only.is_empty() {
        return Ok(scenarios);
    }
    for name in only {
        if !scenarios.iter().any(|s| &s.name == name) {
            let known: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
            bail!(
                "the suite has no scenario {name:?}; it has {}",
                known.join(", ")
            );
        }
    }
    Ok(scenarios
        .into_iter()
        .filter(|s| only.contains(&s.name))
        .collect())
}

/// Where one method's result of one scenario goes.
pub fn result_dir(out: &Path, scenario: &Scenario, method: &str) -> PathBuf {
    out.join(&scenario.name).join(method)
}

/// Runs every method of every scenario; `after_each` sees all results so
/// far after each run (to rewrite the scoreboard).
pub fn run_suite(
    scenarios: &[Scenario],
    image: &GuestImage,
    out: &Path,
    resume: bool,
    mut after_each: impl FnMut(&[RunResult]) -> Result<()>,
) -> Result<Vec<RunResult>> {
    let mut results = Vec::new();
    let runs: usize = scenarios.iter().map(|s| s.methods.len()).sum();
    let mut done = 0;
    for scenario in scenarios {
        for &method in &scenario.methods {
            done += 1;
            let dir = result_dir(out, scenario, method.name());
            let existing = dir.join("result.json");
            if resume && existing.is_file() {
                eprintln!(
                    "mllm lab suite [{done}/{runs}]: {} / {method}: kept from {}",
                    scenario.name,
                    existing.display()
                );
                results.push(RunResult::read(&existing)?);
                continue;
            }
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            eprintln!(
                "mllm lab suite [{done}/{runs}]: {} / {method} ...",
                scenario.name
            );
            let result = run_method(scenario, method, image, &dir)?;
            result.write(&existing)?;
            eprintln!("{}", crate::report::summary(&result));
            results.push(result);
            after_each(&results)?;
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const SCENARIO: &str = r#"
methods = ["qemu-precopy", "mllm"]
[vm]
memory = "256MiB"
[workload]
kind = "idle"
[link]
bandwidth = "100Mbit"
rtt = "50ms"
"#;

    #[test]
    fn a_suite_reads_its_scenarios_relative_to_itself() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", &format!("name = \"a\"\n{SCENARIO}"));
        write(dir.path(), "b.toml", &format!("name = \"b\"\n{SCENARIO}"));
        write(
            dir.path(),
            "suite.toml",
            "name = \"s\"\nscenarios = [\"a.toml\", \"b.toml\"]\n",
        );
        let (suite, scenarios) = Suite::load(&dir.path().join("suite.toml")).unwrap();
        assert_eq!(suite.name, "s");
        let names: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let only = select(scenarios, &["b".into()]).unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(
            result_dir(Path::new("out"), &only[0], "mllm"),
            Path::new("out/b/mllm")
        );
    }

    #[test]
    fn a_suite_with_a_missing_scenario_or_a_duplicate_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", &format!("name = \"a\"\n{SCENARIO}"));
        write(
            dir.path(),
            "missing.toml",
            "name = \"s\"\nscenarios = [\"a.toml\", \"nope.toml\"]\n",
        );
        let error = format!(
            "{:#}",
            Suite::load(&dir.path().join("missing.toml")).unwrap_err()
        );
        assert!(error.contains("nope.toml"), "{error}");
        write(
            dir.path(),
            "twice.toml",
            "name = \"s\"\nscenarios = [\"a.toml\", \"a.toml\"]\n",
        );
        let error = format!(
            "{:#}",
            Suite::load(&dir.path().join("twice.toml")).unwrap_err()
        );
        assert!(error.contains("two scenarios are named \"a\""), "{error}");
    }

    #[test]
    fn selecting_an_unknown_scenario_names_the_known_ones() {
        let scenario = Scenario::parse(&format!("name = \"a\"\n{SCENARIO}")).unwrap();
        let error = select(vec![scenario], &["zzz".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(error, "the suite has no scenario \"zzz\"; it has a");
    }
}
