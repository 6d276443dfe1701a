//! The `cxr-worker` command line: parses arguments, loads the configuration, calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cxr_worker::admin::findings::{self, StudyState};
use cxr_worker::admin::{self, Format, actions, check, status};
use cxr_worker::analyse::analyser::{Analyser, ImageReport, UNTRAINED_WARNING};
use cxr_worker::analyse::helper::{self, Decoder};
use cxr_worker::analyse::infer::{Engine, EngineOptions};
use cxr_worker::analyse::overlay;
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
    /// Internal: the decode helper process started by each analysis worker.
    #[command(name = "decode-helper", hide = true)]
    DecodeHelper {
        #[arg(long)]
        memory_limit_bytes: u64,
    },
    /// Run the DICOM receiver daemon.
    Serve {
        #[arg(long, short, default_value = "/etc/cxr-worker/cxr-worker.toml")]
        config: PathBuf,
    },
    /// Check the configuration, the models (present, loadable, conforming to the contract) and
    /// the database (reachable, migrated); print each check OK or FAILED with its key.
    ///
    /// Exits non-zero when any check failed.
    CheckConfig {
        #[arg(long, short, default_value = "/etc/cxr-worker/cxr-worker.toml")]
        config: PathBuf,
        /// Check the file only: skip the models and the database.
        #[arg(long)]
        offline: bool,
    },
    /// List findings: one row per study and label (maximum probability over the study's images),
    /// newest study date first; a study without findings prints once with its state.
    Findings {
        #[arg(long, short, default_value = "/etc/cxr-worker/cxr-worker.toml")]
        config: PathBuf,
        /// Study date on or after (YYYY-MM-DD or YYYYMMDD).
        #[arg(long)]
        from: Option<String>,
        /// Study date on or before (YYYY-MM-DD or YYYYMMDD).
        #[arg(long)]
        to: Option<String>,
        /// Accession number (exact).
        #[arg(long)]
        accession: Option<String>,
        /// Patient ID (exact).
        #[arg(long)]
        patient_id: Option<String>,
        /// Only this label (one of the 14 NIH ChestX-ray14 labels, any case).
        #[arg(long)]
        label: Option<String>,
        /// Only labels whose maximum probability is at least this (0..1).
        #[arg(long)]
        min_probability: Option<String>,
        /// Only labels called present (probability at or above the model's threshold).
        #[arg(long)]
        present: bool,
        /// Only studies in this state.
        #[arg(long, value_enum)]
        state: Option<StudyState>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// At most this many studies (all their rows print); 0: no limit.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show the job queue, instances of the last 24 hours, the latest failures and the outbox
    /// per destination.
    Status {
        #[arg(long, short, default_value = "/etc/cxr-worker/cxr-worker.toml")]
        config: PathBuf,
        /// table or json.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// How many of the latest failures to list.
        #[arg(long, default_value_t = 10)]
        failures: u32,
    },
    /// Send the study's latest SR again, now, to every configured destination.
    Resend {
        #[arg(long, short, default_value = "/etc/cxr-worker/cxr-worker.toml")]
        config: PathBuf,
        /// Study Instance UID.
        study_uid: String,
    },
    /// Analyse every instance of the study again (e.g. after a model upgrade): the daemon sends
    /// a revised SR that names its predecessor.
    Reprocess {
        #[arg(long, short, default_value = "/etc/cxr-worker/cxr-worker.toml")]
        config: PathBuf,
        /// Study Instance UID.
        study_uid: String,
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
        /// Write the results picture (PNG: banner, organ outlines, class maps of the positive
        /// findings, legend) of each analysed image here.
        #[arg(long)]
        overlays: Option<PathBuf>,
        /// Write each analysed image's organ masks at its source geometry here, as its SEG holds
        /// them: `<SOP Instance UID>.<segment number>.bin`, one byte (0 or 1) per pixel, row-major.
        #[arg(long)]
        masks: Option<PathBuf>,
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
    if let Command::DecodeHelper { memory_limit_bytes } = cli.command {
        return helper::helper_main(memory_limit_bytes);
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cxr-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The reader of stdout went away (`cxr-worker findings | head`): stop quietly.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    if let Some(a) = e.downcast_ref::<admin::AdminError>() {
        return a.is_broken_pipe();
    }
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::DecodeHelper { memory_limit_bytes } => Ok(helper::helper_main(memory_limit_bytes)),
        Command::Serve { config } => {
            // who may store is checked by Daemon::build, before anything is bound
            let cfg = Config::load(&config)?;
            cxr_worker::ops::telemetry::init(&cfg.log.level, cfg.log.format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(cxr_worker::daemon::serve(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config, offline } => check_config(&config, offline),
        Command::Findings {
            config,
            from,
            to,
            accession,
            patient_id,
            label,
            min_probability,
            present,
            state,
            format,
            limit,
        } => {
            let filter = findings::Filter {
                from: from
                    .map(|d| findings::parse_date("--from", &d))
                    .transpose()?,
                to: to.map(|d| findings::parse_date("--to", &d)).transpose()?,
                accession,
                patient_id,
                label: label.map(|l| admin::canonical_label(&l)).transpose()?,
                min_probability: min_probability
                    .map(|p| findings::parse_probability(&p))
                    .transpose()?,
                present_only: present,
                state,
                limit,
            };
            let cfg = Config::load(&config)?;
            let rows = block_on(async {
                let pool = admin::connect(&cfg.database, admin::CONNECT_TIMEOUT).await?;
                let rows = findings::query(&pool, &filter).await?;
                admin::audit::audit_findings(&pool, &cfg, &filter).await;
                Ok::<_, admin::AdminError>(rows)
            })?;
            findings::write(&rows, format, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            config,
            format,
            failures,
        } => {
            if format == Format::Csv {
                anyhow::bail!("status prints --format table or json");
            }
            let cfg = Config::load(&config)?;
            let status = block_on(async {
                let pool = admin::connect(&cfg.database, admin::CONNECT_TIMEOUT).await?;
                status::gather(&pool, &cfg.destinations, failures).await
            })?;
            status::write(&status, format, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Resend { config, study_uid } => {
            let cfg = Config::load(&config)?;
            let outcome = block_on(async {
                let pool = admin::connect(&cfg.database, admin::CONNECT_TIMEOUT).await?;
                let outcome = actions::resend(&pool, &study_uid, &cfg.destinations).await?;
                admin::audit::audit_resend(&pool, &cfg, &study_uid).await;
                Ok::<_, admin::AdminError>(outcome)
            })?;
            outcome.write(&mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reprocess { config, study_uid } => {
            let cfg = Config::load(&config)?;
            let outcome = block_on(async {
                let pool = admin::connect(&cfg.database, admin::CONNECT_TIMEOUT).await?;
                actions::reprocess(&pool, &study_uid).await
            })?;
            outcome.write(&mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Infer {
            config,
            json,
            overlays,
            masks,
            repeat,
            batch_size,
            files,
        } => infer(&config, json, (overlays, masks), repeat, batch_size, &files),
    }
}

/// Run an admin query on a single-threaded runtime.
fn block_on<T>(
    f: impl std::future::Future<Output = Result<T, admin::AdminError>>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(f)?)
}

fn check_config(config: &std::path::Path, offline: bool) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let cfg = match Config::load_to_serve(config) {
        Ok(cfg) => cfg,
        Err(e) => {
            check::write(&[check::Check::failed("config", e.to_string())], &mut out)?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut checks = vec![check::config_summary(config, &cfg)];
    checks.extend(check::check_certificates(&cfg));
    if !offline {
        if cfg.process.roles.analyse {
            checks.extend(check::check_models(&cfg));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        checks.push(runtime.block_on(check::check_database(&cfg, admin::CONNECT_TIMEOUT)));
    }
    check::write(&checks, &mut out)?;
    Ok(if checks.iter().all(|c| c.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn infer(
    config: &std::path::Path,
    json: bool,
    (overlays, masks): (Option<PathBuf>, Option<PathBuf>),
    repeat: usize,
    batch_size: Option<usize>,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    cxr_worker::ops::telemetry::init(&cfg.log.level, cfg.log.format);
    let engine = Engine::load(&EngineOptions::from(&cfg.models))?;
    for dir in overlays.iter().chain(&masks) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut analyser = Analyser {
        engine,
        limits: helper::decode_limits(&cfg),
        batch_size: batch_size.unwrap_or(cfg.models.batch_size).max(1),
        decoder: Decoder::from_config(&cfg.decode),
    };
    let trained = analyser.engine.segmenter.info.trained && analyser.engine.classifier.info.trained;
    if !json && !trained {
        println!("*** {UNTRAINED_WARNING} ***");
    }
    let mut overlay_error = None;
    let mut mask_error = None;
    for _ in 0..repeat.max(1) {
        analyser.analyse_paths(files, |report| {
            if let (Some(dir), Some(f), Some(sop)) =
                (&masks, &report.findings, &report.sop_instance_uid)
                && let Err(e) = write_masks(dir, sop, f)
            {
                mask_error.get_or_insert(e);
            }
            if let (Some(dir), Some(f), Some(p)) =
                (&overlays, &report.findings, &report.probabilities)
            {
                let stem = std::path::Path::new(&report.file)
                    .file_stem()
                    .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
                let picture = overlay::render(f, p);
                if let Err(e) = overlay::write_png(&dir.join(format!("{stem}.png")), &picture) {
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
    if let Some(e) = mask_error {
        return Err(e).context("cannot write a mask");
    }
    Ok(ExitCode::SUCCESS)
}

/// The organ masks of one image at its source geometry, numbered as its SEG's segments are
/// (`report::codes::ORGANS` order, among the channels the segmenter gives).
fn write_masks(
    dir: &std::path::Path,
    sop: &str,
    f: &cxr_worker::analyse::analyser::Findings,
) -> std::io::Result<()> {
    let channels = cxr_worker::analyse::masks::at_source(f);
    let organs = cxr_worker::report::codes::ORGANS
        .iter()
        .filter_map(|o| channels.iter().find(|(c, _)| c == o.channel));
    for (number, (_, mask)) in (1..).zip(organs) {
        // the UID names a file: keep it to digits and dots
        let name: String = sop
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        std::fs::write(dir.join(format!("{name}.{number}.bin")), &mask.bits)?;
    }
    Ok(())
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
                cxr_worker::analyse::analyser::Call::Present => "Present",
                cxr_worker::analyse::analyser::Call::Absent => "Absent",
            });
            let threshold = f.thresholds.get(label).copied().unwrap_or(f32::NAN);
            println!("    {label:<20} {prob:.4}  {call:<7} (threshold {threshold:.3})");
        }
        let a = &f.anatomy;
        let area = |name: &str, x: &cxr_worker::analyse::analyser::Area| match x.mm2 {
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
