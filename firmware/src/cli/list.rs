//! `usrbd list`: the devices the module knows.

use anyhow::Context;
use clap::Args;
use usrbd::device::{state_name, Control};
use usrbd::uapi::name_from_c;

/// List the devices known to the module (from /dev/usrbd-control), one per line:
/// `usrbd0 index=0 size=67108864 state=live servers=1`.
#[derive(Debug, Args)]
pub struct ListArgs {}

pub fn run(_args: ListArgs) -> anyhow::Result<i32> {
    let ctrl = Control::open()?;
    for s in ctrl.statuses().context("listing devices")? {
        println!(
            "{} index={} size={} state={} servers={}",
            name_from_c(&s.name),
            s.index,
            s.size,
            state_name(s.state),
            s.servers
        );
    }
    Ok(0)
}
