//! `usrbd destroy`: destroy a device straight through the control device.

use anyhow::Context;
use clap::Args;
use usrbd::device::Control;

/// Destroy a device through /dev/usrbd-control, without its server: for cleaning
/// up after a dead server. Graceful by default (flush, wait for in-flight I/O);
/// --force fails whatever is left at once.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["name", "index"])))]
pub struct DestroyArgs {
    /// Fail outstanding requests instead of waiting for them
    #[arg(long)]
    force: bool,
    /// The device, by name (e.g. usrbd0)
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The device, by index
    #[arg(long, value_name = "N")]
    index: Option<u32>,
    /// Graceful drain deadline in ms; 0 = the module's default
    #[arg(long, value_name = "N", default_value_t = 0)]
    timeout_ms: u32,
}

pub fn run(args: DestroyArgs) -> anyhow::Result<i32> {
    let ctrl = Control::open()?;
    let index = match (&args.name, args.index) {
        (Some(n), _) => ctrl.find_by_name(n)?,
        (None, Some(i)) => i,
        (None, None) => anyhow::bail!("--name or --index is required"),
    };
    ctrl.destroy(index, args.force, args.timeout_ms)
        .with_context(|| format!("destroying device index {index}"))?;
    Ok(0)
}
