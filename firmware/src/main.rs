//! The `usrbd` command: parses the command line and dispatches to `cli`.

mod cli;

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = cli::Cli::parse();
    std::process::exit(match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("usrbd: {e:#}");
            1
        }
    });
}
