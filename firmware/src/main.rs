//! The `usrbd` command: parses the command line and dispatches to `cli`.

mod cli;

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = cli::Cli::parse();
    std::process::exit(match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("usrbd: {}", chain(&e));
            1
        }
    });
}

/// The error and its causes, leaving out a cause whose text a message before it
/// already includes (library errors name their source in their own message).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}
