//! Running programs: say what runs, and name the command line in every error.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};

/// The command line as a person would type it (for messages only).
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` with the terminal as its stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    eprintln!("$ {line}");
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly: whether it exited 0, and its stdout followed by stderr.
pub fn capture(cmd: &mut Command) -> Result<(bool, String)> {
    let (status, text) = combined_output(cmd)?;
    Ok((status.success(), text))
}

/// Runs `cmd` quietly; fails unless it exits 0, with the tail of what it
/// printed (the image build shows its own progress lines instead).
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    let (status, text) = combined_output(cmd)?;
    if !status.success() {
        bail!("`{line}` failed ({status}):\n{}", tail(&text, 30));
    }
    Ok(())
}

fn combined_output(cmd: &mut Command) -> Result<(ExitStatus, String)> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status, text))
}

/// The stdout of a command that must succeed.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `cmd` runs and exits 0, with its output discarded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Where `program` is on the PATH, or in sbin, which a non-login PATH may
/// lack although root-only tools (mkfs, depmod) live there.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A command for `program` as `which` finds it, ready for arguments.
pub fn tool(program: &str) -> Command {
    Command::new(which(program).unwrap_or_else(|| PathBuf::from(program)))
}

/// Every process below `root` (children, grandchildren…), from /proc.
/// QEMU runs under virtme-ng's Python process; a timeout must stop both.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // The command name may hold spaces and parentheses: fields
            // after the last ')' are "state ppid ...".
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for &(pid, ppid) in &parent_of {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

/// SIGKILL for one process, by id.
pub fn kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn describe_joins_program_and_args() {
        let mut cmd = Command::new("make");
        cmd.args(["-C", "/x", "W=1"]);
        assert_eq!(describe(&cmd), "make -C /x W=1");
    }

    #[test]
    fn descendants_finds_a_grandchild() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut found = Vec::new();
        while found.is_empty() && std::time::Instant::now() < deadline {
            found = descendants(child.id());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(found.len(), 1, "the sleep below sh");
        for pid in found {
            kill(pid);
        }
        kill(child.id());
        child.wait().unwrap();
    }
}
