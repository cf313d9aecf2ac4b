//! `spindle-bench`: scenario benchmarks. Each scenario prints a human table,
//! or with `--json` exactly one JSON object on stdout.
//!
//! ```text
//! spindle-bench wal [--json] [--dir PATH] [--records N] ...
//! ```

mod append;
mod args;
mod commit;
mod dir;
mod floor;
mod handoff;
mod io_counters;
mod latency;
mod probe_storage;
mod report;
mod setup;
mod strategy;
mod system;
mod wal;

use args::Args;
use report::Report;

/// Errors of the harness: anything, with a message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Result with [`BoxError`].
pub type BoxResult<T> = Result<T, BoxError>;

const USAGE: &str = "\
usage: spindle-bench <scenario> [options]

scenarios:
  wal     WAL append throughput, commit latency, group commit, fdatasync floor,
          direct vs handoff append, storage strategy study

`spindle-bench <scenario> --help` lists a scenario's options.";

fn main() {
    if let Err(e) = run() {
        eprintln!("spindle-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> BoxResult<()> {
    let mut argv = std::env::args().skip(1);
    let Some(scenario) = argv.next() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let mut args = Args::new(argv.collect());
    let help = args.flag("--help") || args.flag("-h");
    match scenario.as_str() {
        "wal" if help => println!("{}", wal::USAGE),
        "wal" => {
            let opts = wal::WalOpts::parse(args)?;
            print(&wal::run(&opts)?, opts.json)?;
        }
        "help" | "--help" | "-h" => println!("{USAGE}"),
        other => return Err(format!("unknown scenario {other:?}\n{USAGE}").into()),
    }
    Ok(())
}

fn print(report: &Report, json: bool) -> BoxResult<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
