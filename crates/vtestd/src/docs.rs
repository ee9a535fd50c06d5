//! The man page and shell completions, generated from the CLI itself.

use clap::CommandFactory;

use crate::cli::Cli;

pub fn man() -> Result<(), Box<dyn std::error::Error>> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
    Ok(())
}

pub fn completions(shell: clap_complete::Shell) -> Result<(), Box<dyn std::error::Error>> {
    clap_complete::generate(shell, &mut Cli::command(), "vtestd", &mut std::io::stdout());
    Ok(())
}
