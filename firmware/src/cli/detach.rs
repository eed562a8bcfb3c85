//! `usrbd detach`: ask the running server to detach its device.

use clap::Args;
use usrbd::ipc::Request;

use super::SocketArg;

/// Detach: unmount if mounted here (never lazily), flush, graceful destroy, final
/// sync or RAM image save; the LEDs then show "safe to remove".
///
/// Prints the resulting state. Exits 1 if the detach failed (e.g. the file system
/// is busy: the device then keeps serving and the error LED lights).
#[derive(Debug, Args)]
pub struct DetachArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Stop the server once detached (otherwise it waits for `usrbd attach` or a
    /// short button press)
    #[arg(long)]
    pub exit: bool,
}

pub fn run(args: DetachArgs) -> anyhow::Result<i32> {
    super::request(&args.socket, &Request::Detach { exit: args.exit })
}
