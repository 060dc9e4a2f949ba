fn main() {
    std::process::exit(swarmscan::cli::main());
}
