//! `usrbd upgrade`: what is checked before the service gives its device up
//! (the new binary runs, and resolves the config to the same device), and the
//! exec itself. The hand-over between the two (quiesce, flush, exec, adopt) is
//! in the service's main loop.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::{access, AccessFlags};

/// How long each check run of the new binary may take (QEMU TCG is slow; a
/// real one takes milliseconds).
const CHECK_FOR: Duration = Duration::from_secs(60);

/// How the service was started: what an upgrade runs again.
pub(super) struct Origin {
    /// The executable's path at start; after a package replaced the file, the
    /// same path names the new binary.
    pub exe: Option<PathBuf>,
    /// The whole command line, argv[0] included.
    pub args: Vec<OsString>,
}

impl Origin {
    pub fn current() -> Origin {
        Origin {
            exe: std::env::current_exe().ok(),
            args: std::env::args_os().collect(),
        }
    }
}

/// The arguments (after argv[0]) of the config check: ours, with
/// `--check-config` right after `serve`.
fn check_args(args: &[OsString]) -> Option<Vec<OsString>> {
    let serve = args.iter().skip(1).position(|a| a == "serve")? + 1;
    let mut v = args[1..=serve].to_vec();
    v.push("--check-config".into());
    v.extend_from_slice(&args[serve + 1..]);
    Some(v)
}

/// Runs `binary args`, at most [`CHECK_FOR`]; its stdout if it exited 0.
fn run_check(binary: &Path, args: &[OsString]) -> Result<String, String> {
    let shown = format!(
        "`{} {}`",
        binary.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {shown}: {e}"))?;
    let until = Instant::now() + CHECK_FOR;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < until => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{shown} did not finish within {} s",
                    CHECK_FOR.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for {shown}: {e}")),
        }
    };
    // The checks print a line or two: the pipes never filled up.
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() {
        return Err(format!("{shown} failed ({status}): {}", err.trim()));
    }
    Ok(out)
}

/// Everything that can be known before the device is given up: `binary` is an
/// executable that runs (`--version`), and resolves our command line and the
/// config file as it is now to the device we serve (`serve --check-config`).
pub(super) fn check(
    binary: &Path,
    args: &[OsString],
    ours: &serde_json::Value,
) -> Result<(), String> {
    let meta =
        std::fs::metadata(binary).map_err(|e| format!("new binary {}: {e}", binary.display()))?;
    if !meta.is_file() {
        return Err(format!("new binary {}: not a file", binary.display()));
    }
    access(binary, AccessFlags::X_OK)
        .map_err(|e| format!("new binary {}: not executable: {e}", binary.display()))?;
    let version = run_check(binary, &["--version".into()])?;
    if !version.starts_with("usrbd ") {
        return Err(format!(
            "new binary {} is no usrbd: `--version` printed `{}`",
            binary.display(),
            version.lines().next().unwrap_or("").trim()
        ));
    }
    let check = check_args(args).ok_or("this server was not started as `usrbd serve`")?;
    let out = run_check(binary, &check)?;
    let theirs: serde_json::Value = serde_json::from_str(out.trim()).map_err(|e| {
        format!(
            "`{} serve --check-config` printed `{}`: {e}",
            binary.display(),
            out.trim()
        )
    })?;
    if &theirs != ours {
        return Err(format!(
            "with the config as it is now the new binary would serve {theirs}, not {ours}: \
             `usrbd detach --exit`, then start the service again"
        ));
    }
    Ok(())
}

/// Replaces this process with `binary`, same pid, same arguments; returns only
/// if the exec failed.
pub(super) fn exec(binary: &Path, args: &[OsString]) -> std::io::Error {
    let mut cmd = Command::new(binary);
    if let Some((arg0, rest)) = args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.exec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_config_check_runs_our_command_line_with_check_config() {
        assert_eq!(
            check_args(&os(&["/usr/bin/usrbd", "serve", "--config", "/etc/x.toml"])),
            Some(os(&["serve", "--check-config", "--config", "/etc/x.toml"]))
        );
        assert_eq!(
            check_args(&os(&["usrbd", "serve"])),
            Some(os(&["serve", "--check-config"]))
        );
        assert_eq!(check_args(&os(&["usrbd", "status"])), None);
        // argv[0] is never taken for the subcommand.
        assert_eq!(check_args(&os(&["serve"])), None);
    }

    /// A shell script standing in for the new binary.
    fn script(dir: &Path, body: &str, mode: u32) -> PathBuf {
        let p = dir.join("usrbd-new");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_binary_that_cannot_take_over_is_refused_before_anything_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let args = os(&["usrbd", "serve", "--name", "usrbd0"]);
        let ours = serde_json::json!({"name": "usrbd0"});
        let e = check(&dir.path().join("missing"), &args, &ours).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        let good = r#"case "$1" in --version) echo "usrbd 9.9.9";; serve) echo '{"name":"usrbd0"}';; esac"#;
        let p = script(dir.path(), good, 0o644);
        let e = check(&p, &args, &ours).unwrap_err();
        assert!(e.contains("not executable"), "{e}");
        let p = script(dir.path(), good, 0o755);
        check(&p, &args, &ours).unwrap();
        let e = check(&p, &os(&["usrbd", "status"]), &ours).unwrap_err();
        assert!(e.contains("serve"), "{e}");
        let p = script(dir.path(), "echo 'not a config' >&2; exit 2", 0o755);
        let e = check(&p, &args, &ours).unwrap_err();
        assert!(e.contains("failed") && e.contains("not a config"), "{e}");
        let p = script(dir.path(), "echo hello", 0o755);
        let e = check(&p, &args, &ours).unwrap_err();
        assert!(e.contains("no usrbd"), "{e}");
        // The config now names another device.
        let other = r#"case "$1" in --version) echo "usrbd 9.9.9";; serve) echo '{"name":"usrbd1"}';; esac"#;
        let p = script(dir.path(), other, 0o755);
        let e = check(&p, &args, &ours).unwrap_err();
        assert!(e.contains("usrbd1") && e.contains("detach"), "{e}");
    }
}
