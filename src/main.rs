//! The `cxr-worker` command line: parses arguments, loads the configuration, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cxr_worker::config::Config;
use cxr_worker::pipeline::analyse::{Analyser, ImageReport, UNTRAINED_WARNING};
use cxr_worker::pipeline::decode::DecodeLimits;
use cxr_worker::pipeline::infer::{Engine, EngineOptions};
use cxr_worker::pipeline::overlay;

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
    /// Analyse DICOM files with the configured models and print the findings per image.
    ///
    /// Exits non-zero only for configuration or model errors: a file that cannot be decoded or
    /// is not a chest frontal view is reported with its reason, and the others still run.
    Infer {
        #[arg(long, short, default_value = "/etc/cxr-worker/cxr-worker.toml")]
        config: PathBuf,
        /// One JSON object per image and line (file, eligible, reason, probabilities, findings, timings).
        #[arg(long)]
        json: bool,
        /// Write a PNG overlay (masks, class map of the top finding) per analysed image here.
        #[arg(long)]
        overlays: Option<PathBuf>,
        /// Analyse the whole list this many times (benchmarks; every pass is printed).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Images per inference run (default: `[models] batch_size`).
        #[arg(long)]
        batch_size: Option<usize>,
        /// DICOM files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
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
        Command::Infer {
            config,
            json,
            overlays,
            repeat,
            batch_size,
            files,
        } => infer(&config, json, overlays, repeat, batch_size, &files),
    }
}

fn infer(
    config: &std::path::Path,
    json: bool,
    overlays: Option<PathBuf>,
    repeat: usize,
    batch_size: Option<usize>,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    cxr_worker::telemetry::init(&cfg.log.level, cfg.log.format);
    let engine = Engine::load(&EngineOptions::from(&cfg.models))?;
    if let Some(dir) = &overlays {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut analyser = Analyser {
        engine,
        limits: DecodeLimits {
            max_file_bytes: cfg.dicom.max_dataset_bytes as u64,
            ..DecodeLimits::default()
        },
        batch_size: batch_size.unwrap_or(cfg.models.batch_size).max(1),
    };
    let trained = analyser.engine.segmenter.info.trained && analyser.engine.classifier.info.trained;
    if !json && !trained {
        println!("*** {UNTRAINED_WARNING} ***");
    }
    let mut overlay_error = None;
    for _ in 0..repeat.max(1) {
        analyser.analyse_paths(files, |report| {
            if let (Some(dir), Some(f), Some(p)) =
                (&overlays, &report.findings, &report.probabilities)
            {
                let probs: Vec<f32> = p.0.iter().map(|(_, v)| *v).collect();
                let stem = std::path::Path::new(&report.file)
                    .file_stem()
                    .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
                if let Err(e) = overlay::write_png(&dir.join(format!("{stem}.png")), f, &probs) {
                    overlay_error.get_or_insert(e);
                }
            }
            if json {
                match serde_json::to_string(&report) {
                    Ok(line) => println!("{line}"),
                    Err(e) => eprintln!(
                        "cxr-worker: cannot serialise the report of {}: {e}",
                        report.file
                    ),
                }
            } else {
                print_report(&report);
            }
        })?;
    }
    if let Some(e) = overlay_error {
        return Err(e).context("cannot write an overlay PNG");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &ImageReport) {
    println!("{}", r.file);
    let t = &r.timings;
    if !r.eligible {
        println!("  skipped: {}", r.reason);
        println!("  timings: decode {:.1} ms", t.decode_ms);
        return;
    }
    println!("  analysed: {}", r.reason);
    if let Some(uid) = &r.sop_instance_uid {
        println!("  SOP Instance UID: {uid}");
    }
    if let (Some(f), Some(p)) = (&r.findings, &r.probabilities) {
        if let Some(w) = &f.warning {
            println!("  {w}");
        }
        println!(
            "  models: {} {} / {} {} on {}",
            f.segmenter.name,
            f.segmenter.version,
            f.classifier.name,
            f.classifier.version,
            f.provider
        );
        for (label, prob) in &p.0 {
            let call = f.calls.get(label).map_or("?", |c| match c {
                cxr_worker::pipeline::analyse::Call::Present => "Present",
                cxr_worker::pipeline::analyse::Call::Absent => "Absent",
            });
            let threshold = f.thresholds.get(label).copied().unwrap_or(f32::NAN);
            println!("    {label:<20} {prob:.4}  {call:<7} (threshold {threshold:.3})");
        }
        let a = &f.anatomy;
        let area = |name: &str, x: &cxr_worker::pipeline::analyse::Area| match x.mm2 {
            Some(mm2) => format!("{name} {:.1}% ({:.0} mm²)", x.fraction * 100.0, mm2),
            None => format!("{name} {:.1}% of the image", x.fraction * 100.0),
        };
        println!(
            "  anatomy: {}, {}, {}; cardiothoracic ratio {}",
            area("left lung", &a.left_lung),
            area("right lung", &a.right_lung),
            area("heart", &a.heart),
            a.cardiothoracic_ratio
                .map_or("n/a".into(), |c| format!("{c:.3}"))
        );
    }
    println!(
        "  timings: decode {:.1} ms, preprocess {:.1} ms, segment {:.1} ms, classify {:.1} ms",
        t.decode_ms, t.preprocess_ms, t.segment_ms, t.classify_ms
    );
}
