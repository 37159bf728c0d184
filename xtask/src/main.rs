//! Project tasks. `cargo xtask setup` installs what the build and tests need (idempotent, cached
//! in `.tools/`); `run` starts the game server and the agent; `test` runs the whole suite.
mod bench;
mod kernels;
mod overload;
mod peer;
mod redis;
mod scenario;
mod setup;
mod tasks;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "kernelsight project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain pieces and Debian packages the project needs (idempotent).
    Setup,
    /// Build the agent (with its embedded eBPF object) and the game server, release mode.
    Build,
    /// Start the game server and the agent on this machine (needs root for the agent).
    Run(tasks::RunArgs),
    /// Run the whole test suite (set-up included; formatting and lints first).
    Test(tasks::TestArgs),
    /// Check formatting (rustfmt.toml) and lints (clippy, warnings are errors).
    Lint,
    /// Run every fuzz target for a while on its committed corpus (part of `test`).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 15)]
        seconds: u32,
    },
    /// Run server + agent + bots on loopback, inject one fault, compare detection to ground truth.
    Scenario(scenario::ScenarioArgs),
    /// Burn one CPU for a while (the noisy-neighbour scenario's hog; internal).
    #[command(hide = true)]
    Hog {
        #[arg(long)]
        seconds: u64,
    },
    /// Connect to a closed port again and again (the bystander scenario's process; internal).
    #[command(hide = true)]
    Bystander {
        #[arg(long)]
        target: std::net::SocketAddr,
        #[arg(long)]
        seconds: u64,
    },
    /// Benchmarks that print a table (`probes`, `pool`).
    Bench(bench::BenchArgs),
    /// The fixed scheduling workload `bench probes` measures (internal).
    #[command(hide = true)]
    SchedWorkload {
        #[arg(long)]
        seconds: u64,
    },
    /// Boot Debian's 5.10, 6.1 and 6.12 cloud kernels under qemu and check the agent on each
    /// (prints a kernel × check matrix, writes it into README.md).
    Kernels(kernels::KernelsArgs),
    /// The test driver inside a `kernels` guest (internal).
    #[command(hide = true)]
    KernelGuest(kernels::guest::GuestArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup::run().map(|_| ()),
        Cmd::Build => setup::run().and_then(|env| tasks::build(&env)),
        Cmd::Run(args) => setup::run().and_then(|env| tasks::run(&env, args)),
        Cmd::Test(args) => setup::run().and_then(|env| tasks::test(&env, args)),
        Cmd::Lint => setup::run().and_then(|env| tasks::lint(&env)),
        Cmd::Fuzz { seconds } => setup::run().and_then(|env| tasks::fuzz_smoke(&env, seconds)),
        Cmd::Bench(args) => setup::run().and_then(|env| bench::run(&env, args)),
        Cmd::SchedWorkload { seconds } => bench::sched_workload(seconds),
        Cmd::Kernels(args) => setup::run().and_then(|env| kernels::run(&env, args)),
        Cmd::KernelGuest(args) => kernels::guest::run(args),
        // With --no-build (the test suite) the set-up has been done by whoever built the binaries.
        Cmd::Scenario(args) if args.no_build => scenario::run(&setup::Env::here(), args),
        Cmd::Scenario(args) => setup::run().and_then(|env| scenario::run(&env, args)),
        Cmd::Bystander { target, seconds } => {
            util::set_comm(c"ks-bystander");
            scenario::bystander(target, seconds);
            Ok(())
        }
        Cmd::Hog { seconds } => {
            util::set_comm(c"ks-hog");
            scenario::hog(seconds);
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
