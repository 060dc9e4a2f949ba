// The system allocator is kept on purpose: with mimalloc the engine's peer tables cost
// ~61 instead of ~52 bytes of RSS per known peer (freed rehash buffers stay resident), and
// the probe path allocates little (see bench/README.md).
fn main() {
    std::process::exit(swarmscan::cli::main());
}
