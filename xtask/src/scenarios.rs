//! The VM scenarios in tests/scenarios/: discovery from their header
//! comments, grouping into boots, and the results the in-guest runner writes.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// One boot of the VM. Boots run in this order; a group whose last scenario
/// powers the VM off abruptly (crash consistency) must come before the
/// group that checks the aftermath.
pub struct Group {
    pub name: &'static str,
    pub cpus: u32,
    pub memory: &'static str,
    /// Booted only when a `--filter` names one of its scenarios: too slow
    /// for every run of the whole suite.
    pub opt_in: bool,
}

pub const GROUPS: &[Group] = &[
    // Four vCPUs so a device can have four hardware queues (the module
    // allows at most one per online CPU). Ends with the crash-consistency
    // write, which stops this VM without a detach.
    Group {
        name: "quad",
        cpus: 4,
        memory: "2G",
        opt_in: false,
    },
    // The reliability scenarios (rel_*.sh). 1 GiB so the memory-pressure
    // hog fills it quickly. Ends with a power cut (QEMU killed by the
    // host) whose aftermath the main group checks.
    Group {
        name: "rel",
        cpus: 2,
        memory: "1G",
        opt_in: false,
    },
    Group {
        name: "main",
        cpus: 2,
        memory: "2G",
        opt_in: false,
    },
    // The Debian packages installed with apt: DKMS compiles the module and
    // depmod walks every module of the kernel inside the TCG guest, which
    // takes tens of minutes (`cargo xtask test --filter deb_`).
    Group {
        name: "packaging",
        cpus: 2,
        memory: "2G",
        opt_in: true,
    },
];

pub const DEFAULT_TIMEOUT_S: u32 = 180;
/// A header's `timeout:` is sized for an idle 2-core machine; CI machines
/// run at load 6-9 with TCG guests several times slower. The runner's limit
/// (which only catches hangs) is this many times the header's.
pub const LOADED_MACHINE_FACTOR: u32 = 3;
const DEFAULT_ORDER: i32 = 50;

#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub path: PathBuf,
    pub group: String,
    pub order: i32,
    pub timeout_s: u32,
}

/// Reads `# group: NAME`, `# order: N` and `# timeout: SECONDS` from the
/// leading comment block of a scenario script.
pub fn parse_header(name: &str, text: &str) -> Result<(String, i32, u32)> {
    let mut group = None;
    let mut order = DEFAULT_ORDER;
    let mut timeout = DEFAULT_TIMEOUT_S;
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let body = line.trim_start_matches('#').trim();
        let Some((key, value)) = body.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "group" => group = Some(value.to_string()),
            "order" => {
                order = value
                    .parse()
                    .with_context(|| format!("{name}: `order: {value}` is not a number"))?;
            }
            "timeout" => {
                timeout = value
                    .parse()
                    .with_context(|| format!("{name}: `timeout: {value}` is not seconds"))?;
            }
            _ => {}
        }
    }
    let group = group.with_context(|| format!("{name}: no `# group:` line in its header"))?;
    if !GROUPS.iter().any(|g| g.name == group) {
        let known: Vec<&str> = GROUPS.iter().map(|g| g.name).collect();
        bail!(
            "{name}: unknown group `{group}` (known: {})",
            known.join(", ")
        );
    }
    Ok((group, order, timeout))
}

/// Every `*.sh` in `dir` but `lib.sh`, sorted by group boot order, then
/// `order`, then name.
pub fn discover(dir: &Path) -> Result<Vec<Scenario>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(file) = path.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            continue;
        };
        let Some(name) = file.strip_suffix(".sh") else {
            continue;
        };
        if name == "lib" {
            continue;
        }
        let text = fs::read_to_string(&path)?;
        let (group, order, timeout_s) = parse_header(&file, &text)?;
        found.push(Scenario {
            name: name.to_string(),
            path,
            group,
            order,
            timeout_s: timeout_s * LOADED_MACHINE_FACTOR,
        });
    }
    sort(&mut found);
    Ok(found)
}

fn group_rank(name: &str) -> usize {
    GROUPS
        .iter()
        .position(|g| g.name == name)
        .unwrap_or(usize::MAX)
}

pub fn sort(list: &mut [Scenario]) {
    list.sort_by(|a, b| {
        (group_rank(&a.group), a.order, &a.name).cmp(&(group_rank(&b.group), b.order, &b.name))
    });
}

/// Scenarios whose name contains any of `filters` (all but the opt-in
/// groups' when none given).
pub fn select(all: Vec<Scenario>, filters: &[String]) -> Vec<Scenario> {
    all.into_iter()
        .filter(|s| {
            if filters.is_empty() {
                !GROUPS.iter().any(|g| g.name == s.group && g.opt_in)
            } else {
                filters.iter().any(|f| s.name.contains(f.as_str()))
            }
        })
        .collect()
}

/// One line of the runner's results file:
/// `USRBD-RESULT<TAB>name<TAB>PASS|FAIL<TAB>seconds<TAB>reason`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub name: String,
    pub passed: bool,
    pub seconds: f64,
    pub reason: String,
}

pub const RESULT_TAG: &str = "USRBD-RESULT";

pub fn parse_result(line: &str) -> Option<Outcome> {
    let mut fields = line.trim_end_matches(['\r', '\n']).split('\t');
    if fields.next()? != RESULT_TAG {
        return None;
    }
    let name = fields.next()?.to_string();
    let passed = match fields.next()? {
        "PASS" => true,
        "FAIL" => false,
        _ => return None,
    };
    let seconds = fields.next()?.parse().ok()?;
    let reason = fields.next().unwrap_or("").to_string();
    Some(Outcome {
        name,
        passed,
        seconds,
        reason,
    })
}

pub fn parse_results(text: &str) -> Vec<Outcome> {
    text.lines().filter_map(parse_result).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_gives_group_order_timeout() {
        let text = "#!/bin/sh\n# Proves a thing.\n# group: main\n# order: 7\n# timeout: 60\nset -eu\n# group: quad\n";
        assert_eq!(
            parse_header("x.sh", text).unwrap(),
            ("main".to_string(), 7, 60)
        );
    }

    #[test]
    fn header_defaults_and_errors() {
        let (g, o, t) = parse_header("x.sh", "#!/bin/sh\n# group: quad\n").unwrap();
        assert_eq!(
            (g.as_str(), o, t),
            ("quad", DEFAULT_ORDER, DEFAULT_TIMEOUT_S)
        );
        assert!(parse_header("x.sh", "#!/bin/sh\nset -eu\n").is_err());
        let err = parse_header("x.sh", "# group: nope\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown group"), "{err}");
        assert!(parse_header("x.sh", "# group: main\n# timeout: soon\n").is_err());
    }

    fn sc(name: &str, group: &str, order: i32) -> Scenario {
        Scenario {
            name: name.to_string(),
            path: PathBuf::from(name),
            group: group.to_string(),
            order,
            timeout_s: 1,
        }
    }

    #[test]
    fn sorted_by_boot_then_order_then_name() {
        let mut v = vec![
            sc("b", "main", 50),
            sc("crash", "quad", 99),
            sc("a", "main", 50),
            sc("multi", "quad", 50),
            sc("first", "main", 0),
        ];
        sort(&mut v);
        let names: Vec<&str> = v.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["multi", "crash", "first", "a", "b"]);
    }

    #[test]
    fn filter_matches_substrings() {
        let all = vec![
            sc("crash_write", "quad", 99),
            sc("crash_check", "main", 50),
            sc("fuzz", "main", 50),
        ];
        let picked = select(all.clone(), &["crash".to_string()]);
        assert_eq!(picked.len(), 2);
        assert_eq!(select(all, &[]).len(), 3);
    }

    #[test]
    fn result_lines_parse() {
        let text = "noise\nUSRBD-RESULT\tfuzz\tPASS\t12.5\t\nUSRBD-RESULT\tkill\tFAIL\t3.0\tdmesg: BUG: x\nUSRBD-RESULT\tbad\tMAYBE\t1\t\n";
        let r = parse_results(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].name, "fuzz");
        assert!(r[0].passed);
        assert!((r[0].seconds - 12.5).abs() < 1e-9);
        assert!(!r[1].passed);
        assert_eq!(r[1].reason, "dmesg: BUG: x");
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios");
        let all = discover(&dir).unwrap();
        assert!(!all.is_empty());
    }
}
