//! `cargo xtask soak`: the long versions of the reliability scenarios.
//!
//! Runs tests/scenarios/rel_*.sh with `USRBD_SOAK=1` in the plan (each
//! scenario then runs its long version) and `# soak-timeout:` as the
//! limit: one boot of the `rel` group, which ends with a power cut, then
//! boots that check the aftermath and cut power again as often as asked.
//! Every scenario prints a `FIGURES <name> key=value ...` line; the soak
//! collects them, prints a table, and with `--docs` writes it into
//! docs/reliability.md between the soak markers.

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::module;
use crate::scenarios::{self, Group, Scenario, GROUPS};
use crate::setup::{self, Paths, Scope};
use crate::test::{self, Guest, Report};

const USAGE: &str = "\
usage: cargo xtask soak [--filter NAME]... [--power-cuts N] [--percent N] [--docs]

  --filter NAME   run only rel_* scenarios whose name contains NAME
  --power-cuts N  power cuts in all (each costs two boots; default 3)
  --percent N     scale every soak count to N % (1..100, default 100; never
                  below the CI count), for machines where TCG is slow
  --docs          write the figures into docs/reliability.md

The scenarios (tests/scenarios/rel_*.sh) and their counts:
";

const PREFIX: &str = "rel_";
const CUT: &str = "rel_power_cut_write";
const CUT_CHECK: &str = "rel_power_cut_check";
const FIGURES_TAG: &str = "FIGURES";
const DOC: &str = "docs/reliability.md";
const BEGIN: &str = "<!-- soak-figures:begin -->";
const END: &str = "<!-- soak-figures:end -->";

struct Options {
    filters: Vec<String>,
    power_cuts: u32,
    percent: u32,
    docs: bool,
    help: bool,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut o = Options {
        filters: Vec::new(),
        power_cuts: 3,
        percent: 100,
        docs: false,
        help: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--filter" => o
                .filters
                .push(it.next().context("--filter needs a NAME")?.clone()),
            "--power-cuts" => {
                let n = it.next().context("--power-cuts needs a number")?;
                o.power_cuts = n
                    .parse()
                    .with_context(|| format!("--power-cuts {n}: not a number"))?;
            }
            "--percent" => {
                let n = it.next().context("--percent needs a number")?;
                o.percent = n
                    .parse()
                    .ok()
                    .filter(|p| (1..=100).contains(p))
                    .with_context(|| format!("--percent {n}: want 1..100"))?;
            }
            "--docs" => o.docs = true,
            "-h" | "--help" => o.help = true,
            other => bail!("unknown option `{other}`\n{USAGE}"),
        }
    }
    Ok(o)
}

/// Reads `# soak-timeout: SECONDS` from a scenario's leading comments.
fn soak_timeout(text: &str) -> Result<Option<u32>> {
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let body = line.trim_start_matches('#').trim();
        if let Some(v) = body.strip_prefix("soak-timeout:") {
            let v = v.trim();
            return v
                .parse()
                .map(Some)
                .with_context(|| format!("`soak-timeout: {v}` is not seconds"));
        }
    }
    Ok(None)
}

/// The `CI: ...; soak: ...` counts a scenario's leading comments state, else
/// the two numbers of its first `soak_or CI SOAK` (tests/lib.sh).
fn counts(text: &str) -> Option<String> {
    let said = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.find("CI:").map(|i| l[i..].trim().to_string()));
    said.or_else(|| {
        let i = text.find("$(soak_or ")?;
        let mut w = text[i + 10..].split(|c: char| c.is_whitespace() || c == ')');
        Some(format!("CI: {}; soak: {}.", w.next()?, w.next()?))
    })
}

/// One line per soak scenario: its name and counts, for `--help`.
fn scenario_list(list: &[Scenario]) -> Result<String> {
    let mut out = String::new();
    for s in list.iter().filter(|s| s.name.starts_with(PREFIX)) {
        let text = fs::read_to_string(&s.path).with_context(|| s.name.clone())?;
        let c = counts(&text).unwrap_or_else(|| "the same run in CI and soak".into());
        out.push_str(&format!("  {:<32} {c}\n", s.name));
    }
    Ok(out)
}

/// One scenario's figures: `FIGURES <name> k=v ...` from its output.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    name: String,
    pairs: Vec<(String, String)>,
}

fn parse_figures(text: &str) -> Vec<Figures> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            if words.next()? != FIGURES_TAG {
                return None;
            }
            let name = words.next()?.to_string();
            let pairs = words
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Some(Figures { name, pairs })
        })
        .collect()
}

/// One row per run of a scenario: what it proved and its figures.
struct Row {
    name: String,
    passed: bool,
    seconds: f64,
    figures: Vec<(String, String)>,
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from("| scenario | result | time | figures |\n|---|---|---|---|\n");
    for r in rows {
        let figs: Vec<String> = r.figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.push_str(&format!(
            "| {} | {} | {:.0} s | {} |\n",
            r.name,
            if r.passed { "pass" } else { "FAIL" },
            r.seconds,
            if figs.is_empty() {
                "(none printed)".to_string()
            } else {
                figs.join(" ")
            }
        ));
    }
    t
}

/// Replaces what lies between the soak markers of `doc` with `body`.
fn splice(doc: &str, body: &str) -> Result<String> {
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        bail!("{DOC} lacks the markers {BEGIN} / {END}");
    };
    if e < b {
        bail!("{DOC}: {END} comes before {BEGIN}");
    }
    Ok(format!("{}{BEGIN}\n{body}{}", &doc[..b], &doc[e..]))
}

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    let paths = Paths::new();
    if opts.help {
        let mut all = scenarios::discover(&paths.repo.join("tests/scenarios"))?;
        scenarios::sort(&mut all);
        print!("{USAGE}{}", scenario_list(&all)?);
        return Ok(());
    }
    let mut chosen: Vec<Scenario> = scenarios::select(
        scenarios::discover(&paths.repo.join("tests/scenarios"))?,
        &opts.filters,
    )
    .into_iter()
    .filter(|s| s.name.starts_with(PREFIX))
    .collect();
    if chosen.is_empty() {
        bail!("no rel_* scenario matches {:?}", opts.filters);
    }
    for s in &mut chosen {
        let text = fs::read_to_string(&s.path)?;
        if let Some(t) = soak_timeout(&text).with_context(|| s.name.clone())? {
            s.timeout_s = t;
        }
    }
    let env = setup::ensure(&paths, Scope::Vm)?;
    let dir = paths.xdir.join("soak");
    let _ = fs::remove_dir_all(&dir);
    for sub in ["data", "results", "logs"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    eprintln!("xtask: building usrbd.ko for {}", env.kernel);
    let ko = module::build(&paths, &env.kernel)?.ko;
    let (usrbd, vmkit) = test::build_release(&paths)?;
    let guest = Guest {
        usrbd,
        vmkit,
        ko,
        dir: dir.clone(),
        extra_env: format!(
            "export USRBD_SOAK=1\nexport USRBD_SOAK_PERCENT={}\n",
            opts.percent
        ),
    };

    let group = |name: &str| GROUPS.iter().find(|g| g.name == name);
    let rel = group("rel").context("no `rel` group in scenarios::GROUPS")?;
    let main = group("main").context("no `main` group in scenarios::GROUPS")?;
    let find = |name: &str| chosen.iter().find(|s| s.name == name);
    let mut boots: Vec<(&Group, Vec<&Scenario>)> =
        vec![(rel, chosen.iter().filter(|s| s.group == rel.name).collect())];
    if let (Some(cut), Some(check)) = (find(CUT), find(CUT_CHECK)) {
        let cut_in_first = boots[0].1.iter().any(|s| s.name == CUT);
        for n in 0..opts.power_cuts {
            if n > 0 || !cut_in_first {
                boots.push((rel, vec![cut]));
            }
            boots.push((main, vec![check]));
        }
    }
    boots.retain(|(_, members)| !members.is_empty());

    let start = Instant::now();
    let mut report = Report::new();
    let mut rows = Vec::new();
    for (g, members) in &boots {
        // Results of an earlier boot of the same group must not stand in.
        let _ = fs::remove_file(dir.join("results").join(format!("{}.tsv", g.name)));
        test::run_group(&paths, &env, &guest, g, members, &mut report)?;
        collect(&dir, g.name, members, &mut rows);
    }
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    let body = format!(
        "Last soak: {} on {} (QEMU TCG, {} vCPUs per boot), soak counts at {} %, {} boots, {:.0} min, {} passed, {} failed.\n\n{}",
        cmd_date(),
        env.kernel,
        rel.cpus,
        opts.percent,
        boots.len(),
        minutes,
        rows.iter().filter(|r| r.passed).count(),
        rows.iter().filter(|r| !r.passed).count(),
        table(&rows)
    );
    println!("\n{body}");
    if opts.docs {
        let path = paths.repo.join(DOC);
        let doc = fs::read_to_string(&path).with_context(|| format!("reading {DOC}"))?;
        fs::write(&path, splice(&doc, &body)?).with_context(|| format!("writing {DOC}"))?;
        eprintln!("xtask: figures written to {DOC}");
    }
    report.finish()
}

/// Pass/fail from the group's results file, figures from each output.
fn collect(dir: &Path, group: &str, members: &[&Scenario], rows: &mut Vec<Row>) {
    let results =
        fs::read_to_string(dir.join("results").join(format!("{group}.tsv"))).unwrap_or_default();
    let outcomes = scenarios::parse_results(&results);
    for s in members {
        let outcome = outcomes.iter().find(|o| o.name == s.name);
        let out = fs::read_to_string(dir.join("logs").join(format!("{}.out", s.name)))
            .unwrap_or_default();
        let figures = parse_figures(&out)
            .into_iter()
            .rev()
            .find(|f| f.name == s.name)
            .map(|f| f.pairs)
            .unwrap_or_default();
        rows.push(Row {
            name: s.name.clone(),
            passed: outcome.is_some_and(|o| o.passed),
            seconds: outcome.map_or(0.0, |o| o.seconds),
            figures,
        });
    }
}

fn cmd_date() -> String {
    crate::cmd::stdout(std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "(date unknown)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_lines_parse() {
        let out = "# noise\nFIGURES rel_x cycles=10 missing=0 seconds=42\nFIGURES\nFIGURES rel_y a=1 junk b=2\n";
        let f = parse_figures(out);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, "rel_x");
        assert_eq!(
            f[0].pairs,
            [("cycles", "10"), ("missing", "0"), ("seconds", "42")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(f[1].pairs.len(), 2, "a word without = is skipped");
    }

    #[test]
    fn options_parse() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = parse_args(&args(&["--percent", "25", "--power-cuts", "1", "--docs"])).unwrap();
        assert_eq!((o.percent, o.power_cuts, o.docs), (25, 1, true));
        assert_eq!(parse_args(&[]).unwrap().percent, 100);
        assert!(parse_args(&args(&["--percent", "0"])).is_err());
        assert!(parse_args(&args(&["--percent", "101"])).is_err());
        assert!(parse_args(&args(&["--bogus"])).is_err());
        assert!(parse_args(&args(&["--help"])).unwrap().help);
    }

    #[test]
    fn soak_timeout_header() {
        let text = "#!/bin/sh\n# group: rel\n# timeout: 60\n# soak-timeout: 900\nset -eu\n";
        assert_eq!(soak_timeout(text).unwrap(), Some(900));
        assert_eq!(soak_timeout("# group: rel\n").unwrap(), None);
        assert!(soak_timeout("# soak-timeout: long\n").is_err());
        assert_eq!(
            soak_timeout("# group: rel\nset -eu\n# soak-timeout: 5\n").unwrap(),
            None,
            "only the leading comment block counts"
        );
    }

    #[test]
    fn splice_replaces_between_markers() {
        let doc = format!("head\n{BEGIN}\nold\n{END}\ntail\n");
        let new = splice(&doc, "new\n").unwrap();
        assert_eq!(new, format!("head\n{BEGIN}\nnew\n{END}\ntail\n"));
        assert!(splice("no markers", "x").is_err());
        assert!(splice(&format!("{END}\n{BEGIN}\n"), "x").is_err());
    }

    #[test]
    fn table_lists_figures_and_failures() {
        let rows = [
            Row {
                name: "rel_a".into(),
                passed: true,
                seconds: 12.4,
                figures: vec![("cycles".into(), "50".into())],
            },
            Row {
                name: "rel_b".into(),
                passed: false,
                seconds: 0.0,
                figures: vec![],
            },
        ];
        let t = table(&rows);
        assert!(t.contains("| rel_a | pass | 12 s | cycles=50 |"), "{t}");
        assert!(t.contains("| rel_b | FAIL | 0 s | (none printed) |"), "{t}");
    }

    #[test]
    fn the_shipped_rel_scenarios_have_soak_timeouts() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios");
        let rel: Vec<_> = scenarios::discover(&dir)
            .unwrap()
            .into_iter()
            .filter(|s| s.name.starts_with(PREFIX))
            .collect();
        assert!(rel.len() >= 8, "one scenario per reliability case");
        let help = scenario_list(&rel).unwrap();
        // Issue 14's 200 kill + re-attach cycles with ext4 mounted.
        assert!(
            help.lines()
                .any(|l| l.contains("rel_ext4_server_kill_recovers") && l.contains("soak: 200")),
            "{help}"
        );
        assert!(help.contains("rel_ext4_upgrade_loses_nothing"), "{help}");
        assert_eq!(
            counts("# group: rel\nn=$(soak_or 10000 200000)\n").as_deref(),
            Some("CI: 10000; soak: 200000.")
        );
        for s in rel {
            let text = fs::read_to_string(&s.path).unwrap();
            assert!(soak_timeout(&text).unwrap().is_some(), "{}", s.name);
        }
    }
}
