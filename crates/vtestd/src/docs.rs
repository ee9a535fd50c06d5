//! The man page and shell completions, generated from the CLI itself.

use clap::CommandFactory;

use crate::cli::Cli;

/// `vtestd man`: the main page on stdout, or every page into `dir` (the
/// main page refers to `vtestd-serve(1)` and the others, so packages
/// install them all).
pub fn man(dir: Option<&std::path::Path>) -> Result<(), Box<dyn std::error::Error>> {
    let command = Cli::command().disable_help_subcommand(true);
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(command, dir)?;
        }
        None => clap_mangen::Man::new(command).render(&mut std::io::stdout())?,
    }
    Ok(())
}

pub fn completions(shell: clap_complete::Shell) -> Result<(), Box<dyn std::error::Error>> {
    clap_complete::generate(shell, &mut Cli::command(), "vtestd", &mut std::io::stdout());
    Ok(())
}
