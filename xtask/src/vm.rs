//! Booting the test kernel with virtme-ng: a copy-on-write view of this
//! machine's root filesystem, so the guest runs the binaries cargo just built
//! and the host's fio/mkfs, with one host directory shared read-write.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cmd;
use crate::setup::is_root;

pub struct Vm {
    pub vng: PathBuf,
    /// Kernel release; boots /boot/vmlinuz-<release>.
    pub kernel: String,
    pub cpus: u32,
    pub memory: String,
    /// Host directory the guest may write (same path inside).
    pub rwdir: PathBuf,
    /// Guest working directory (same path as on the host).
    pub cwd: PathBuf,
}

/// A guest line asking the host to kill the VM at once (a power cut).
pub const HOST_KILL_MARK: &str = "USRBD-HOST-KILL";

/// How a non-interactive boot ended.
pub struct Ended {
    /// vng's exit code (the command's, or 255 when the guest powered off).
    pub code: Option<i32>,
    pub timed_out: bool,
}

impl Vm {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.vng);
        c.arg("--run")
            .arg(format!("/boot/vmlinuz-{}", self.kernel))
            // KVM fails on these machines (nested); TCG is the tested path.
            .args(["--disable-kvm", "--force-9p"])
            .args(["--cpus", &self.cpus.to_string()])
            .args(["--memory", &self.memory])
            .arg("--rwdir")
            .arg(&self.rwdir)
            .current_dir(&self.cwd);
        // vng starts virtme-run (and that its helpers) through PATH: the
        // venv's bin/ must come first or a machine without a global
        // virtme-ng fails with "virtme-run: not found".
        if let Some(bin) = self.vng.parent() {
            let mut dirs = vec![bin.to_path_buf()];
            dirs.extend(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            ));
            if let Ok(path) = std::env::join_paths(dirs) {
                c.env("PATH", path);
            }
        }
        if !is_root() {
            c.args(["--user", "root"]);
        }
        c
    }

    /// Boots, runs `exec` in the guest, passes every console line to
    /// `on_line` as it arrives and appends it to `log`. Stops the VM after
    /// `timeout`.
    pub fn run(
        &self,
        exec: &str,
        timeout: Duration,
        log: &Path,
        mut on_line: impl FnMut(&str),
    ) -> Result<Ended> {
        let mut log_file =
            File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut c = self.command();
        c.arg("--exec")
            .arg(exec)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let line = cmd::describe(&c);
        writeln!(log_file, "$ {line}")?;
        let mut child = c
            .spawn()
            .with_context(|| format!("cannot start `{line}`"))?;

        let (tx, rx) = mpsc::channel::<String>();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || forward(out, &tx)));
        }
        if let Some(err) = child.stderr.take() {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || forward(err, &tx)));
        }
        drop(tx);

        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(text) => {
                    let _ = writeln!(log_file, "{text}");
                    if text.trim() == HOST_KILL_MARK {
                        let _ = writeln!(log_file, "xtask: killing the VM (QEMU SIGKILL)");
                        stop(child.id());
                    }
                    on_line(&text);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if !timed_out && Instant::now() > deadline {
                timed_out = true;
                let _ = writeln!(
                    log_file,
                    "xtask: VM timed out after {} s, stopping it",
                    timeout.as_secs()
                );
                stop(child.id());
            }
        }
        for r in readers {
            let _ = r.join();
        }
        let status = child.wait()?;
        Ok(Ended {
            code: status.code(),
            timed_out,
        })
    }

    /// Boots with the terminal attached; `shell` is the guest's shell program.
    pub fn interactive(&self, shell: &Path) -> Result<()> {
        let mut c = self.command();
        c.arg("--shell").arg(shell);
        let line = cmd::describe(&c);
        eprintln!("$ {line}");
        c.status()
            .with_context(|| format!("cannot start `{line}`"))?;
        Ok(())
    }
}

fn forward(from: impl std::io::Read, to: &mpsc::Sender<String>) {
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                if to
                    .send(text.trim_end_matches(['\r', '\n']).to_string())
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Stops vng and the QEMU below it.
fn stop(pid: u32) {
    for p in cmd::descendants(pid).into_iter().rev() {
        cmd::kill(p);
    }
    cmd::kill(pid);
}
