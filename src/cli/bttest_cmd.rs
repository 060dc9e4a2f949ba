//! `swarmscan bttest server` and `swarmscan bttest client HOST[:PORT]`: does this path block
//! or throttle BitTorrent? (`crate::bttest`).
//!
//! Exit codes: 0 ok (whatever the verdict), 2 bad configuration or arguments (a server that
//! does not resolve included), 1 the test could not run or broke off (what was measured
//! until then is printed and stored).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bttest::client::{self, ClientOptions};
use crate::bttest::server::{self, Server};
use crate::bttest::store::{save_run, RunRecord};
use crate::config::ConfigArgs;
use crate::settings::BttestSettings;

/// Arguments of `swarmscan bttest`.
#[derive(clap::Args, Debug)]
pub struct BttestArgs {
    #[command(subcommand)]
    command: BttestCommand,
}

#[derive(clap::Subcommand, Debug)]
enum BttestCommand {
    /// Serve tests: the control address `bttest.listen`, the test ports `bttest.ports` on its IP.
    Server(ServerArgs),
    /// Run a test against a server: eight flows (BitTorrent and plain TCP, upload and
    /// download, port 6881 and another) --repeat times; print and store the verdicts.
    Client(ClientArgs),
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// Stop by itself after this long: 90s, 15m, 2h, 3d (or plain seconds); default: until
    /// SIGINT/SIGTERM.
    #[arg(long = "for", value_name = "DURATION", value_parser = super::run_cmd::parse_duration)]
    duration: Option<Duration>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(clap::Args, Debug)]
struct ClientArgs {
    /// The server: HOST, HOST:PORT, IP or [IPv6]:PORT (default port: that of bttest.listen).
    server: String,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Rounds of the eight flows (every other round in reverse order).
    #[arg(long, default_value_t = 3, value_parser = crate::limits::count::<u32>(1, 100))]
    repeat: u32,
    /// Payload bytes per flow.
    #[arg(long, default_value_t = 4 << 20, value_parser = crate::limits::count::<u64>(16 * 1024, server::MAX_FLOW_BYTES))]
    bytes: u64,
    /// A flow ends after this many seconds even if not every byte moved (its rate counts).
    #[arg(long, default_value_t = 20, value_parser = crate::limits::count::<u32>(1, server::MAX_FLOW_MS as u64 / 1000))]
    flow_secs: u32,
    /// Do not store the run in the database.
    #[arg(long)]
    no_store: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Runs `swarmscan bttest`; returns the exit code.
pub fn run(args: &BttestArgs) -> i32 {
    match &args.command {
        BttestCommand::Server(a) => run_server(a),
        BttestCommand::Client(a) => run_client(a),
    }
}

fn load(config: &ConfigArgs) -> Result<crate::config::Config, i32> {
    config.load().map_err(|e| {
        eprintln!("swarmscan: {e}");
        2
    })
}

fn run_server(args: &ServerArgs) -> i32 {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::logging::init();
    let settings = BttestSettings::from(&config);
    let server = match Server::bind(&settings) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("swarmscan: bttest server: {e}");
            return 1;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("swarmscan: signal handler: {e}");
            return 1;
        }
    }
    let addr = server.local_addr();
    println!(
        "bttest server: control {addr}, test ports {} (BitTorrent) and {}",
        settings.ports[0], settings.ports[1]
    );
    server.serve(&stop, args.duration.map(|d| Instant::now() + d));
    0
}

fn run_client(args: &ClientArgs) -> i32 {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = client::resolve(&args.server, config.bttest.listen.port()) {
        eprintln!("swarmscan: bttest: {e}");
        return 2;
    }
    // Open the database first: a test that cannot be stored should say so before it runs.
    let store = if args.no_store {
        None
    } else {
        match crate::store::Store::open(&config.database) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("swarmscan: {e}");
                return 2;
            }
        }
    };
    let opts = ClientOptions {
        server: args.server.clone(),
        default_port: config.bttest.listen.port(),
        repeat: args.repeat,
        flow_bytes: args.bytes,
        flow_secs: args.flow_secs,
        progress: true,
    };
    let run = match client::run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("swarmscan: bttest: {e}");
            return 1;
        }
    };
    if let Some(store) = &store {
        let record = RunRecord {
            test_id: run.test_id,
            server: &args.server,
            server_addr: run.server_addr.to_string(),
            ports: run.ports,
            started_at: run.started_at,
            ended_at: run.ended_at,
            repeats: args.repeat,
            flow_bytes: args.bytes,
            error: run.error.clone(),
            verdict: &run.verdict,
            flows: &run.flows,
        };
        match save_run(store, &record) {
            Ok(id) => eprintln!(
                "bttest: stored as run {id} in {}",
                config.database.display()
            ),
            Err(e) => eprintln!("swarmscan: bttest: could not store the run: {e}"),
        }
    }
    if args.json {
        let json = serde_json::json!({
            "test_id": format!("{:016x}", run.test_id),
            "server": args.server,
            "server_addr": run.server_addr.to_string(),
            "ports": {"bittorrent": run.ports[0], "other": run.ports[1]},
            "blocked": run.verdict.blocked,
            "rate_limited": run.verdict.rate_limited,
            "rates": run.verdict.rates,
            "flows": run.flows,
            "complete": run.error.is_none(),
            "error": run.error,
        });
        match serde_json::to_string_pretty(&json) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("swarmscan: {e}");
                return 1;
            }
        }
    } else {
        print!("{}", client::render(&run, &args.server));
    }
    match &run.error {
        Some(e) => {
            eprintln!("swarmscan: bttest broke off: {e}");
            1
        }
        None => 0,
    }
}
