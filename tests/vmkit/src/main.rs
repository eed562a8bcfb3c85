//! vmkit: helpers that run inside the test VM. `main` only parses the
//! command line and dispatches; each subcommand lives in its own file.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod ackcheck;
mod ackwrite;
mod block;
mod errno;
mod forked;
mod fuzz;
mod late;
mod leds_check;
mod orphan;
mod panel;
mod stall;
mod stamp;
mod stop;
mod wake;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// uinput front panel: LEDs recorded to a file, button pressed through a FIFO
    Panel(panel::Args),
    /// Check a recorded LED stream for phases in order
    LedsCheck(leds_check::Args),
    /// Write random self-describing blocks, logging each once it is durable
    Ackwrite(ackwrite::Args),
    /// Check that every acknowledged block is on the image
    Ackcheck(ackcheck::Args),
    /// Send malformed ioctls to usrbd.ko while its devices keep serving
    Fuzz(fuzz::Args),
    /// A server stuck faulting on its buffer: I/O must time out, destroy work
    Stall(stall::Args),
    /// A server that answers a READ after its timeout, once the tag is reused
    LateAnswer(late::Args),
    /// Stamp every block of a device, or check reads of stamped blocks
    Stamp(stamp::Args),
    /// A dead server's forked child holds its fd: a new server must attach
    Orphan(orphan::Args),
    /// A server answering with assorted errnos: the reader sees disk errors only
    Errno(errno::Args),
    /// A server forking while it serves: no wrong block, children refused
    Forked(forked::Args),
    /// A request given back to the queue must wake a server asleep in SERVE
    Wake(wake::Args),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Panel(a) => panel::run(a),
        Cmd::LedsCheck(a) => leds_check::run(a),
        Cmd::Ackwrite(a) => ackwrite::run(a),
        Cmd::Ackcheck(a) => ackcheck::run(a),
        Cmd::Fuzz(a) => fuzz::run(a),
        Cmd::Stall(a) => stall::run(a),
        Cmd::LateAnswer(a) => late::run(a),
        Cmd::Stamp(a) => stamp::run(a),
        Cmd::Orphan(a) => orphan::run(a),
        Cmd::Errno(a) => errno::run(a),
        Cmd::Wake(a) => wake::run(a),
        Cmd::Forked(a) => forked::run(a),
    };
    result.unwrap_or_else(|e| {
        eprintln!("vmkit: {e:#}");
        ExitCode::FAILURE
    })
}
