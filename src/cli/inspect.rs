//! `swarmscan inspect` (to be written).

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A .torrent file, a magnet link or a 40-hex info-hash.
    pub input: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: &InspectArgs) -> i32 {
    eprintln!("inspect: not yet implemented");
    2
}
