//! `vtestd`: a vtest server for Mesa's virgl driver that serves every client
//! from its own worker process.
#![forbid(unsafe_code)]

mod admin;
mod cdi;
mod cli;
mod docs;
mod logging;
mod render_server;
mod sandbox;
mod serve;
mod worker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Serve(args) => {
            logging::init("vtestd");
            match serve::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{}", logging::chain(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
        cli::Command::CheckConfig(args) => report(admin::check_config(args)),
        cli::Command::Status(args) => report(admin::status(args)),
        cli::Command::Metrics(args) => report(admin::metrics(args)),
        cli::Command::Cdi(args) => report(cdi::run(args)),
        cli::Command::Man { dir } => report(docs::man(dir.as_deref())),
        cli::Command::Completions { shell } => report(docs::completions(shell)),
        cli::Command::Worker(args) => {
            logging::init(logging::WORKER);
            worker::run(args)
        }
        cli::Command::RenderServer(args) => {
            logging::init(logging::WORKER);
            render_server::run(args)
        }
    }
}

/// Prints an admin command's error chain.
fn report(result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vtestd: {}", logging::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
