//! Booting the image in QEMU `raspi3b`: kernel, DTB, initramfs and command
//! line come out of the image's own boot partition, the image is the SD card.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::disk;
use super::progress::step;
use crate::cmd;

/// The DTB of the board QEMU emulates.
const DTB: &str = "bcm2837-rpi-3-b.dtb";
/// Lines that end a boot early: nothing good follows them.
const FATAL: &[&str] = &[
    "USRBD-INITRAMFS-FAILED",
    "USRBD-IMAGE-NOT-READY",
    "Kernel panic",
];

pub struct Markers<'a> {
    /// Every one of these must appear on the serial console.
    pub all: &'a [&'a str],
    pub timeout: Duration,
    /// Echo the serial console while it runs.
    pub echo: bool,
}

/// What `config.txt` tells the firmware to load.
struct BootFiles {
    kernel: String,
    initramfs: Option<String>,
}

fn boot_files(config: &str) -> BootFiles {
    let mut files = BootFiles {
        kernel: "kernel8.img".into(),
        initramfs: None,
    };
    for line in config.lines().map(str::trim) {
        if let Some(k) = line.strip_prefix("kernel=") {
            files.kernel = k.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("initramfs ") {
            files.initramfs = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    files
}

/// Boots `image` and waits for the markers. The serial log is kept in
/// `work/serial.log`.
pub fn boot(image: &Path, work: &Path, markers: &Markers) -> Result<()> {
    let files = work.join("boot-files");
    if files.exists() {
        fs::remove_dir_all(&files)?;
    }
    disk::copy_from_boot(image, &["config.txt", "cmdline.txt", DTB], &files)?;
    let config = fs::read_to_string(files.join("config.txt"))?;
    let wanted = boot_files(&config);
    let mut names = vec![wanted.kernel.as_str()];
    names.extend(wanted.initramfs.as_deref());
    disk::copy_from_boot(image, &names, &files)?;
    let cmdline = fs::read_to_string(files.join("cmdline.txt"))?;
    let cmdline = cmdline.trim();

    let mut qemu = cmd::tool("qemu-system-aarch64");
    qemu.args([
        "-M", "raspi3b", "-m", "1G", "-display", "none", "-monitor", "none",
    ])
    .arg("-kernel")
    .arg(files.join(&wanted.kernel))
    .arg("-dtb")
    .arg(files.join(DTB))
    .arg("-append")
    .arg(cmdline)
    // snapshot=on: the guest's writes go to a temporary overlay, so a
    // boot test leaves the built image as it was.
    .arg("-drive")
    .arg(format!(
        "if=sd,format=raw,snapshot=on,file={}",
        image.display()
    ))
    // The first UART (PL011) is unused; the console is the mini UART,
    // as on a real Pi 3 with enable_uart=1.
    .args(["-serial", "null", "-serial", "stdio"]);
    if let Some(initrd) = &wanted.initramfs {
        qemu.arg("-initrd").arg(files.join(initrd));
    }
    step(&format!(
        "booting {} in QEMU raspi3b (kernel {}, {DTB}, cmdline \"{cmdline}\")",
        image.display(),
        wanted.kernel
    ));
    let log_path = work.join("serial.log");
    let mut log = File::create(&log_path)?;
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-aarch64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let started = Instant::now();
    let mut seen = vec![false; markers.all.len()];
    let mut lines: Vec<String> = Vec::new();
    let outcome = loop {
        let left = markers.timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            break Err(format!("timed out after {}s", markers.timeout.as_secs()));
        }
        match rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                if markers.echo {
                    println!("serial| {line}");
                }
                for (i, m) in markers.all.iter().enumerate() {
                    seen[i] |= line.contains(m);
                }
                let fatal = FATAL
                    .iter()
                    .find(|f| line.contains(*f))
                    .map(|f| f.to_string());
                lines.push(line);
                if seen.iter().all(|s| *s) {
                    break Ok(());
                }
                if let Some(f) = fatal {
                    break Err(format!("the guest reported `{f}`"));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break Err("QEMU exited".to_string()),
        }
    };
    // raspi3b does not power off: the boot ends when we stop QEMU.
    let _ = child.kill();
    let status = child.wait()?;
    match outcome {
        Ok(()) => {
            step(&format!(
                "boot ok in {:.1}s: {} (serial log: {})",
                started.elapsed().as_secs_f64(),
                markers.all.join(" + "),
                log_path.display()
            ));
            Ok(())
        }
        Err(why) => {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut stderr);
            }
            let missing: Vec<&str> = markers
                .all
                .iter()
                .zip(&seen)
                .filter(|(_, s)| !**s)
                .map(|(m, _)| *m)
                .collect();
            bail!(
                "image boot failed: {why}; missing: {}; QEMU {status} {}\n--- serial log tail ({}) ---\n{}",
                missing.join(", "),
                stderr.trim(),
                log_path.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_files_follow_config_txt() {
        let f = boot_files("arm_64bit=1\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n");
        assert_eq!(f.kernel, "vmlinuz");
        assert_eq!(f.initramfs.as_deref(), Some("initrd.img"));
        let f = boot_files("# nothing\n");
        assert_eq!(f.kernel, "kernel8.img");
        assert!(f.initramfs.is_none());
    }
}
