//! `usrbd upgrade`: hand the running server's device to a new binary.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;
use usrbd::ipc::{self, Request};

use super::SocketArg;

/// Replace the running server's binary without failing any I/O: it answers what
/// it holds, fetches nothing more, flushes, and execs the new binary (same pid,
/// same arguments), which adopts the device; what arrives meanwhile waits in the
/// module's queue (file backend only: a RAM or USB-exported device is refused,
/// detach and restart those).
///
/// The new binary is run with `--version` and `serve --check-config` first; the
/// device is given up only if both succeed. Exits 0 once the new binary serves,
/// 1 if the upgrade was refused or did not finish.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// The binary to exec [default: the server's executable path, i.e. the file
    /// a package installed there since]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// How long to wait for the new binary to serve
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout_s: u64,
}

fn instance(status: Option<&Value>) -> Option<u64> {
    status?.get("instance")?.as_u64()
}

pub fn run(args: UpgradeArgs) -> anyhow::Result<i32> {
    let path = ipc::find_socket(args.socket.socket.as_deref())?;
    let ask = |req: &Request| {
        ipc::call(&path, req).with_context(|| format!("asking the server at {}", path.display()))
    };
    let before = ask(&Request::Status)?;
    let old = instance(before.status.as_ref())
        .context("the server reports no instance (too old for `usrbd upgrade`?)")?;
    // The server's working directory is not ours.
    let binary = match args.binary {
        Some(b) => {
            Some(std::fs::canonicalize(&b).with_context(|| format!("new binary {}", b.display()))?)
        }
        None => None,
    };
    let resp = ask(&Request::Upgrade { binary })?;
    if !resp.ok {
        println!("{}", resp.state);
        eprintln!("usrbd: upgrade refused: {}", resp.error.unwrap_or_default());
        return Ok(1);
    }
    let until = Instant::now() + Duration::from_secs(args.timeout_s);
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(100));
        // Between the exec and the new socket nobody answers: keep asking.
        let Ok(r) = ipc::call(&path, &Request::Status) else {
            continue;
        };
        let error = r
            .status
            .as_ref()
            .and_then(|s| s.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        match instance(r.status.as_ref()) {
            Some(i) if i == old && r.state != "upgrading" => {
                println!("{}", r.state);
                eprintln!("usrbd: the upgrade failed, the old binary serves on: {error}");
                return Ok(1);
            }
            Some(i) if i != old && r.state == "serving" => {
                let s = r.status.unwrap_or_default();
                println!(
                    "serving (pid {}, usrbd {}, instance {i})",
                    s.get("pid").unwrap_or(&Value::Null),
                    s.get("version").and_then(Value::as_str).unwrap_or("?")
                );
                return Ok(0);
            }
            Some(i) if i != old && r.state == "error" => {
                println!("{}", r.state);
                eprintln!("usrbd: the new binary runs but does not serve: {error}");
                return Ok(1);
            }
            _ => {}
        }
    }
    bail!(
        "the new binary did not serve within {} s (see the server's log)",
        args.timeout_s
    )
}
