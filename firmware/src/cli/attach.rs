//! `usrbd attach`: serve the device again after a detach.

use clap::Args;
use usrbd::ipc::Request;

use super::SocketArg;

/// Re-create and serve the device from the same backing store after a detach.
///
/// Prints the resulting state; exits 1 if the device could not be created.
#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    socket: SocketArg,
}

pub fn run(args: AttachArgs) -> anyhow::Result<i32> {
    super::request(&args.socket, &Request::Attach)
}
