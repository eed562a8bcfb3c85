//! The command line: one file per subcommand.

mod attach;
mod destroy;
mod detach;
mod list;
mod serve;
mod status;
mod upgrade;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// usrbd: serve usrbd.ko block devices from RAM or the SD card, with status LEDs
/// and a detach button.
#[derive(Debug, Parser)]
#[command(name = "usrbd", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Serve(Box<serve::ServeArgs>),
    Detach(detach::DetachArgs),
    Attach(attach::AttachArgs),
    Status(status::StatusArgs),
    List(list::ListArgs),
    Destroy(destroy::DestroyArgs),
    Upgrade(upgrade::UpgradeArgs),
}

/// Runs a subcommand; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(a) => serve::run(*a),
        Command::Detach(a) => detach::run(a),
        Command::Attach(a) => attach::run(a),
        Command::Status(a) => status::run(a),
        Command::List(a) => list::run(a),
        Command::Destroy(a) => destroy::run(a),
        Command::Upgrade(a) => upgrade::run(a),
    }
}

/// The `--socket` flag every client subcommand shares.
#[derive(Debug, clap::Args)]
pub struct SocketArg {
    /// Control socket of the server [default: the only socket in /run/usrbd,
    /// /run/usrbd/<device name>.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Sends one request to the server the socket flag names; prints the state.
fn request(sock: &SocketArg, req: &usrbd::ipc::Request) -> anyhow::Result<i32> {
    use anyhow::Context;
    let path = usrbd::ipc::find_socket(sock.socket.as_deref())?;
    let resp = usrbd::ipc::call(&path, req)
        .with_context(|| format!("asking the server at {}", path.display()))?;
    println!("{}", resp.state);
    match resp.error {
        Some(e) if !resp.ok => {
            eprintln!("usrbd: {e}");
            Ok(1)
        }
        _ => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("usrbd").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_and_flag_has_help() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
            for arg in sub.get_arguments() {
                if ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{} --{} has no help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }

    #[test]
    fn serve_flags_parse() {
        let c = parse(&[
            "serve",
            "--name",
            "t0",
            "--size",
            "64MiB",
            "--backend",
            "file",
            "--file",
            "/tmp/x",
            "--queues",
            "2",
            "--depth",
            "32",
            "--max-io",
            "128K",
            "--block-size",
            "4096",
            "--timeout-ms",
            "500",
            "--read-only",
            "--direct",
            "--socket",
            "/tmp/s",
            "--button",
            "input:/dev/input/event3:KEY_POWER",
            "--led-status",
            "sysfs:/sys/class/leds/input3::numlock",
            "--led-activity",
            "none",
            "--led-error",
            "gpio:/dev/gpiochip0:4:active-low",
            "--long-press-ms",
            "2000",
            "--debounce-ms",
            "20",
            "--poweroff-cmd",
            "true",
            "--export",
            "none",
        ])
        .unwrap();
        let Command::Serve(a) = c.command else {
            panic!("not serve")
        };
        let o = a.overrides();
        assert_eq!(o.name.as_deref(), Some("t0"));
        assert_eq!(o.size.map(|s| s.0), Some(64 << 20));
        assert_eq!(o.max_io.map(|s| s.0), Some(128 << 10));
        assert_eq!(
            (o.queues, o.depth, o.block_size),
            (Some(2), Some(32), Some(4096))
        );
        assert!(o.read_only && o.direct);
        assert_eq!(o.poweroff_cmd.as_deref(), Some("true"));
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        assert!(parse(&["serve", "--size", "12Q"]).is_err());
        assert!(parse(&["serve", "--backend", "nbd"]).is_err());
        assert!(parse(&["serve", "--button", "usb:1"]).is_err());
        assert!(parse(&["serve", "--led-status", "sysfs:relative"]).is_err());
        assert!(parse(&["serve", "--queues", "x"]).is_err());
        assert!(parse(&["serve", "--export", "nfs"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
    }

    #[test]
    fn destroy_needs_exactly_one_target() {
        assert!(parse(&["destroy", "--force", "--name", "usrbd0"]).is_ok());
        assert!(parse(&["destroy", "--force", "--index", "3"]).is_ok());
        assert!(parse(&["destroy", "--name", "usrbd0", "--timeout-ms", "100"]).is_ok());
        assert!(parse(&["destroy", "--force"]).is_err());
        assert!(parse(&["destroy", "--name", "a", "--index", "1"]).is_err());
    }

    #[test]
    fn client_flags_parse() {
        let c = parse(&["detach", "--exit", "--socket", "/run/usrbd/x.sock"]).unwrap();
        assert!(matches!(c.command, Command::Detach(ref a) if a.exit));
        let c = parse(&["status", "--json"]).unwrap();
        assert!(matches!(c.command, Command::Status(ref a) if a.json));
        assert!(parse(&["attach"]).is_ok());
        assert!(parse(&["list"]).is_ok());
        let c = parse(&["upgrade", "--binary", "/tmp/usrbd", "--timeout-s", "30"]).unwrap();
        assert!(
            matches!(c.command, Command::Upgrade(ref a) if a.binary.as_deref() == Some(std::path::Path::new("/tmp/usrbd")) && a.timeout_s == 30)
        );
        assert!(parse(&["serve", "--check-config"]).is_ok());
    }
}
