//! The `cxr-worker` command line: parses arguments, loads the configuration, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cxr_worker::config::Config;

#[derive(Parser)]
#[command(
    name = "cxr-worker",
    version,
    about = "DICOM worker for chest radiographs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the DICOM receiver daemon.
    Serve {
        #[arg(long, short, default_value = "/etc/cxr-worker/cxr-worker.toml")]
        config: PathBuf,
    },
    /// Validate the configuration file and print a summary of it.
    CheckConfig {
        #[arg(long, short, default_value = "/etc/cxr-worker/cxr-worker.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cxr-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = Config::load(&config)?;
            cxr_worker::telemetry::init(&cfg.log.level, cfg.log.format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(cxr_worker::daemon::serve(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(&config)?;
            println!(
                "configuration OK: AE title {} on {}, spool {}",
                cfg.dicom.ae_title,
                cfg.dicom.listen,
                cfg.spool.dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
