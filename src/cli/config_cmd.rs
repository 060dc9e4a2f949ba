//! `swarmscan config`: print the documented default configuration, the effective one, or
//! check a file.

use crate::config::{Config, ConfigArgs};
use std::path::PathBuf;

/// Arguments of `swarmscan config`.
#[derive(clap::Args, Debug)]
pub struct ConfigCmdArgs {
    /// Check this configuration file and exit (0 = valid, 2 = invalid, with the reason).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "set"])]
    pub check: Option<PathBuf>,
    /// With --config/--set: print the effective configuration instead of the defaults.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Runs `swarmscan config`; returns the exit code.
pub fn run(args: &ConfigCmdArgs) -> i32 {
    if let Some(path) = &args.check {
        return match Config::load(Some(path), &[]) {
            Ok(_) => {
                println!("{}: ok", path.display());
                0
            }
            Err(e) => {
                eprintln!("swarmscan: {e}");
                2
            }
        };
    }
    if args.config.config.is_none() && args.config.set.is_empty() {
        print!("{}", Config::default_toml());
        return 0;
    }
    match args.config.load() {
        Ok(config) => match toml::to_string(&config) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("swarmscan: cannot print the configuration: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("swarmscan: {e}");
            2
        }
    }
}
