//! `usrbd status`: what the running server is doing.

use anyhow::{anyhow, Context};
use clap::Args;
use serde_json::Value;
use usrbd::ipc::{self, Request};

use super::SocketArg;

/// Show the server's state, device, counters and memory use.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StatusArgs) -> anyhow::Result<i32> {
    let path = ipc::find_socket(args.socket.socket.as_deref())?;
    let resp = ipc::call(&path, &Request::Status)
        .with_context(|| format!("asking the server at {}", path.display()))?;
    let status = resp.status.ok_or_else(|| {
        anyhow!(
            "the server sent no status: {}",
            resp.error.unwrap_or_default()
        )
    })?;
    if args.json {
        println!("{status}");
    } else {
        print!("{}", table(&status));
    }
    Ok(0)
}

fn table(s: &Value) -> String {
    let v = |p: &str| match s.pointer(p) {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    };
    let mut out = String::new();
    let mut row = |k: &str, val: String| out.push_str(&format!("{k:<16}{val}\n"));
    row("state", v("/state"));
    if s.get("error").is_some() {
        row("error", v("/error"));
    }
    row(
        "device",
        format!(
            "{} (index {}, {} bytes)",
            v("/device/path"),
            v("/device/index"),
            v("/device/size")
        ),
    );
    row("backend", v("/backend"));
    row(
        "served",
        format!(
            "{} reads ({} B), {} writes ({} B), {} flushes, {} fua, {} discards, {} write_zeroes, {} errors",
            v("/served/reads"),
            v("/served/bytes_read"),
            v("/served/writes"),
            v("/served/bytes_written"),
            v("/served/flushes"),
            v("/served/fua"),
            v("/served/discards"),
            v("/served/write_zeroes"),
            v("/served/errors"),
        ),
    );
    if s.get("kernel").is_some_and(|k| !k.is_null()) {
        row(
            "kernel",
            format!(
                "{}, {} openers, {} servers, {} queued, {} in flight, {} timeouts, {} rejected",
                v("/kernel/state"),
                v("/kernel/openers"),
                v("/kernel/servers"),
                v("/kernel/queued"),
                v("/kernel/inflight"),
                v("/kernel/timeouts"),
                v("/kernel/rejected"),
            ),
        );
    } else {
        row("kernel", "no device".into());
    }
    row(
        "memory",
        format!(
            "{} B resident, {} B backend",
            v("/memory/resident_bytes"),
            v("/memory/backend_bytes")
        ),
    );
    out
}
