//! Decoding isolated in a helper process (decode step): a codec that panics, aborts, loops or
//! allocates without bound while decoding one image costs that image, never the worker.
//!
//! Each analysis worker keeps one helper, `cxr-worker decode-helper`, started on first use and
//! again after it dies. The helper limits its own address space (`RLIMIT_AS`), dumps no core,
//! dies with its parent, and reads requests on stdin: the bytes of one Part 10 file and the
//! [`DecodeRequest`]; it answers on stdout with the [`DecodedImage`] (or the reason it could not
//! decode). A watchdog kills it when one image takes longer than its time limit. The worker sees
//! every failure as that image's "undecodable" reason and goes on with the next image.
//!
//! Wire format (little endian), requests: `"CXRQ"`, u32 JSON length, JSON [`DecodeRequest`],
//! u64 file length, file bytes. Responses: `"CXRP"`, u32 JSON length, JSON [`Reply`], then for an
//! eligible image the segmenter and classifier grey images as u32 count + f32 values each.

use std::io::{BufReader, BufWriter, Read, Write};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::analyser::{DecodeRequest, DecodedImage, decode_for_models};
use super::decode::{DecodeLimits, GreyImage};

const REQUEST_MAGIC: &[u8; 4] = b"CXRQ";
const REPLY_MAGIC: &[u8; 4] = b"CXRP";
/// Largest JSON part of a message (requests and replies are a few KB).
const MAX_JSON_BYTES: u32 = 1 << 20;
/// The subcommand that runs the helper.
pub const SUBCOMMAND: &str = "decode-helper";

/// The helper's answer for one image.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Decoded(Box<DecodedImage>),
    Failed(String),
}

/// Where images are decoded.
#[derive(Debug)]
pub enum Decoder {
    /// In this process (tests, fuzzing); a panic is caught, an abort is not.
    InProcess,
    /// In a helper process with memory and time limits.
    Isolated(Box<HelperProcess>),
}

/// The decode caps of a configuration: files up to `[dicom] max_dataset_mb` (plus file meta),
/// images up to `[decode] max_pixels`.
pub fn decode_limits(config: &crate::config::Config) -> DecodeLimits {
    DecodeLimits {
        max_file_bytes: config.dicom.max_dataset_bytes as u64 + 65_536,
        max_pixels: config.decode.max_pixels,
    }
}

impl Decoder {
    /// The daemon's decoder: this very program (`/proc/self/exe`, which stays valid while an
    /// upgrade replaces the file) as the helper, with `[decode]`'s limits.
    pub fn from_config(config: &crate::config::DecodeConfig) -> Self {
        Self::isolated(
            PathBuf::from("/proc/self/exe"),
            config.memory_limit_bytes,
            config.timeout,
        )
    }

    /// Decode in a helper process started from `exe` (this program), with an address-space
    /// limit of `memory_limit_bytes` and `timeout` per image.
    pub fn isolated(exe: PathBuf, memory_limit_bytes: u64, timeout: Duration) -> Self {
        Self::Isolated(Box::new(HelperProcess {
            exe,
            memory_limit_bytes,
            timeout,
            running: None,
            restarts: 0,
        }))
    }

    /// Decode one Part 10 file of `len` bytes read from `file`, for the models; `Err` is the
    /// reason it is not analysed. The isolated decoder streams the file to its helper: the
    /// worker never holds it whole.
    pub fn decode(
        &mut self,
        file: &mut dyn Read,
        len: u64,
        request: &DecodeRequest,
    ) -> Result<DecodedImage, String> {
        if len > request.limits.max_file_bytes {
            return Err(format!(
                "undecodable: file is {len} bytes, over the {}-byte cap",
                request.limits.max_file_bytes
            ));
        }
        match self {
            Self::InProcess => {
                let mut bytes = Vec::new();
                file.take(len)
                    .read_to_end(&mut bytes)
                    .map_err(|e| format!("undecodable: cannot read the file: {e}"))?;
                decode_caught(&bytes, request)
            }
            Self::Isolated(helper) => helper.decode(file, len, request),
        }
    }

    /// Helper processes started again after one died (0 in process).
    pub fn restarts(&self) -> u64 {
        match self {
            Self::InProcess => 0,
            Self::Isolated(h) => h.restarts,
        }
    }
}

/// [`decode_for_models`] with a panic turned into a failure.
fn decode_caught(bytes: &[u8], request: &DecodeRequest) -> Result<DecodedImage, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| decode_for_models(bytes, request))) {
        Ok(Ok(image)) => Ok(image),
        Ok(Err(e)) => Err(format!("undecodable: {e}")),
        Err(payload) => Err(format!(
            "undecodable: the decoder failed ({})",
            panic_message(payload.as_ref())
        )),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into());
    text.chars().take(200).collect()
}

/// A decode helper process, restarted when it dies.
#[derive(Debug)]
pub struct HelperProcess {
    exe: PathBuf,
    memory_limit_bytes: u64,
    timeout: Duration,
    running: Option<Running>,
    restarts: u64,
}

#[derive(Debug)]
struct Running {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    watchdog: Watchdog,
}

impl HelperProcess {
    fn decode(
        &mut self,
        file: &mut dyn Read,
        len: u64,
        request: &DecodeRequest,
    ) -> Result<DecodedImage, String> {
        if self.running.is_none() {
            self.running = Some(self.start()?);
        }
        let Some(running) = self.running.as_mut() else {
            return Err("undecodable: the decode helper is not running".into());
        };
        running.watchdog.arm(self.timeout);
        let exchanged = write_request(&mut running.stdin, request, file, len)
            .and_then(|()| read_reply(&mut running.stdout, request));
        let fired = running.watchdog.disarm();
        match exchanged {
            Ok(Reply::Decoded(image)) => Ok(*image),
            Ok(Reply::Failed(reason)) => Err(reason),
            Err(Exchange::Source(e)) => {
                // the helper waits for bytes that will not come: start afresh
                self.stop();
                Err(format!("undecodable: cannot read the file: {e}"))
            }
            Err(Exchange::Helper(io)) => {
                let status = self.stop();
                self.restarts += 1;
                Err(if fired {
                    format!(
                        "undecodable: decoding took longer than {} s and was stopped",
                        self.timeout.as_secs()
                    )
                } else {
                    format!(
                        "undecodable: the decoder crashed ({}; it may have exceeded its {} MiB memory limit)",
                        describe(status, &io),
                        self.memory_limit_bytes >> 20
                    )
                })
            }
        }
    }

    fn start(&self) -> Result<Running, String> {
        let mut child = Command::new(&self.exe)
            .arg(SUBCOMMAND)
            .arg("--memory-limit-bytes")
            .arg(self.memory_limit_bytes.to_string())
            // the helper must not talk to systemd as if it were the service
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            // few malloc arenas: each reserves address space counted by RLIMIT_AS
            .env("MALLOC_ARENA_MAX", "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "undecodable: cannot start the decode helper {}: {e}",
                    self.exe.display()
                )
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("undecodable: the decode helper has no pipes".into());
        };
        let watchdog = Watchdog::spawn(child.id());
        Ok(Running {
            child,
            stdin: BufWriter::with_capacity(1 << 16, stdin),
            stdout: BufReader::with_capacity(1 << 16, stdout),
            watchdog,
        })
    }

    /// Kill the helper (if still alive) and reap it.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut running = self.running.take()?;
        running.watchdog.quit();
        let _ = running.child.kill();
        running.child.wait().ok()
    }
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn describe(status: Option<ExitStatus>, io: &std::io::Error) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.signal(), s.code()) {
            (Some(sig), _) => format!("killed by signal {sig} ({})", signal_name(sig)),
            (None, Some(code)) => format!("exited with status {code}"),
            _ => format!("ended: {io}"),
        },
        None => format!("lost: {io}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        24 => "SIGXCPU",
        _ => "signal",
    }
}

/// Kills a process when a deadline passes while armed.
#[derive(Debug)]
struct Watchdog {
    state: Arc<(Mutex<WatchState>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct WatchState {
    deadline: Option<Instant>,
    fired: bool,
    quit: bool,
}

impl Watchdog {
    fn spawn(pid: u32) -> Self {
        let state = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("decode-watchdog".into())
            .spawn(move || watch(pid, &shared))
            .ok();
        Self { state, thread }
    }

    fn arm(&self, timeout: Duration) {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap_or_else(PoisonError::into_inner);
        s.deadline = Some(Instant::now() + timeout);
        s.fired = false;
        cv.notify_all();
    }

    /// Disarm; whether the deadline had passed and the process was killed.
    fn disarm(&self) -> bool {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap_or_else(PoisonError::into_inner);
        s.deadline = None;
        cv.notify_all();
        s.fired
    }

    fn quit(&mut self) {
        {
            let (lock, cv) = &*self.state;
            let mut s = lock.lock().unwrap_or_else(PoisonError::into_inner);
            s.quit = true;
            s.deadline = None;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.quit();
    }
}

fn watch(pid: u32, state: &(Mutex<WatchState>, Condvar)) {
    let (lock, cv) = state;
    let mut s = lock.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if s.quit {
            return;
        }
        match s.deadline {
            None => s = cv.wait(s).unwrap_or_else(PoisonError::into_inner),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                    s.fired = true;
                    s.deadline = None;
                } else {
                    s = cv
                        .wait_timeout(s, d - now)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
            }
        }
    }
}

// ---- the wire ---------------------------------------------------------------------------------

/// What broke an exchange with the helper: reading the file, or the helper itself.
#[derive(Debug)]
enum Exchange {
    Source(std::io::Error),
    Helper(std::io::Error),
}

impl From<std::io::Error> for Exchange {
    fn from(e: std::io::Error) -> Self {
        Self::Helper(e)
    }
}

fn write_request(
    w: &mut impl Write,
    request: &DecodeRequest,
    file: &mut dyn Read,
    len: u64,
) -> Result<(), Exchange> {
    let json = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    w.write_all(REQUEST_MAGIC)?;
    w.write_all(&(json.len() as u32).to_le_bytes())?;
    w.write_all(&json)?;
    w.write_all(&len.to_le_bytes())?;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want]).map_err(Exchange::Source)?;
        if n == 0 {
            return Err(Exchange::Source(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file is shorter than its length",
            )));
        }
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.flush()?;
    Ok(())
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_json<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> std::io::Result<T> {
    let len = read_u32(r)?;
    if len > MAX_JSON_BYTES {
        return Err(bad("message header too large"));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json)?;
    serde_json::from_slice(&json).map_err(|e| bad(&e.to_string()))
}

/// Read `count` f32 values, at most `max`.
fn read_floats(r: &mut impl Read, max: usize) -> std::io::Result<Vec<f32>> {
    let count = read_u32(r)? as usize;
    if count > max {
        return Err(bad("image larger than requested"));
    }
    let mut raw = vec![0u8; count * 4];
    r.read_exact(&mut raw)?;
    Ok(raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn read_reply(r: &mut impl Read, request: &DecodeRequest) -> Result<Reply, Exchange> {
    read_reply_io(r, request).map_err(Exchange::Helper)
}

fn read_reply_io(r: &mut impl Read, request: &DecodeRequest) -> std::io::Result<Reply> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != REPLY_MAGIC {
        return Err(bad("not a decode helper reply"));
    }
    let mut reply: Reply = read_json(r)?;
    if let Reply::Decoded(image) = &mut reply
        && image.eligible
    {
        // the source size sizes the SEG's masks: never more than the decode limit allows
        let pixels = (image.rows as u64).checked_mul(image.columns as u64);
        if pixels.is_none_or(|p| p == 0 || p > request.limits.max_pixels) {
            return Err(bad("source size outside the decode limits"));
        }
        let (width, height) = super::analyser::display_size(image.rows, image.columns);
        for (grey, width, height) in [
            (
                &mut image.grey_segmenter,
                request.segmenter_size,
                request.segmenter_size,
            ),
            (
                &mut image.grey_classifier,
                request.classifier_size,
                request.classifier_size,
            ),
            (&mut image.grey_display, width, height),
        ] {
            let pixels = read_floats(r, width * height)?;
            if pixels.len() != width * height {
                return Err(bad("image of the wrong size"));
            }
            *grey = GreyImage {
                width,
                height,
                pixels,
            };
        }
    }
    Ok(reply)
}

fn write_reply(w: &mut impl Write, reply: &Reply) -> std::io::Result<()> {
    let json = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    w.write_all(REPLY_MAGIC)?;
    w.write_all(&(json.len() as u32).to_le_bytes())?;
    w.write_all(&json)?;
    if let Reply::Decoded(image) = reply
        && image.eligible
    {
        for grey in [
            &image.grey_segmenter,
            &image.grey_classifier,
            &image.grey_display,
        ] {
            w.write_all(&(grey.pixels.len() as u32).to_le_bytes())?;
            let mut raw = Vec::with_capacity(grey.pixels.len() * 4);
            for p in &grey.pixels {
                raw.extend_from_slice(&p.to_le_bytes());
            }
            w.write_all(&raw)?;
        }
    }
    w.flush()
}

/// Read one request; `None` at a clean end of input (the worker closed the pipe).
fn read_request(r: &mut impl Read) -> std::io::Result<Option<(DecodeRequest, Vec<u8>)>> {
    let mut magic = [0u8; 4];
    match r.read_exact(&mut magic) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if &magic != REQUEST_MAGIC {
        return Err(bad("not a decode request"));
    }
    let request: DecodeRequest = read_json(r)?;
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > request.limits.max_file_bytes {
        return Err(bad("file larger than the request's limit"));
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(len as usize)
        .map_err(|_| bad("cannot hold the file"))?;
    r.take(len).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != len {
        return Err(bad("file cut short"));
    }
    Ok(Some((request, bytes)))
}

/// The helper process: limit itself, then answer requests until stdin closes.
pub fn helper_main(memory_limit_bytes: u64) -> std::process::ExitCode {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let limit = Rlimit {
        current: Some(memory_limit_bytes),
        maximum: Some(memory_limit_bytes),
    };
    let no_core = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if setrlimit(Resource::As, limit).is_err() || setrlimit(Resource::Core, no_core).is_err() {
        return std::process::ExitCode::from(3);
    }
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    // panics are answered as failures; the default hook would only add noise on stderr
    std::panic::set_hook(Box::new(|_| {}));
    let mut input = BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    let mut output = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    loop {
        let (request, bytes) = match read_request(&mut input) {
            Ok(Some(r)) => r,
            Ok(None) => return std::process::ExitCode::SUCCESS,
            Err(_) => return std::process::ExitCode::from(2),
        };
        let reply = match decode_caught(&bytes, &request) {
            Ok(image) => Reply::Decoded(Box::new(image)),
            Err(reason) => Reply::Failed(reason),
        };
        drop(bytes);
        if write_reply(&mut output, &reply).is_err() {
            return std::process::ExitCode::from(2);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_and_lengths_are_capped() {
        let request = DecodeRequest {
            limits: DecodeLimits::default(),
            segmenter_size: 2,
            classifier_size: 1,
        };
        let mut wire = Vec::new();
        write_request(&mut wire, &request, &mut &b"DICM"[..], 4).unwrap();
        let (back, bytes) = read_request(&mut &wire[..]).unwrap().unwrap();
        assert_eq!(back.segmenter_size, 2);
        assert_eq!(bytes, b"DICM");
        assert!(read_request(&mut &[][..]).unwrap().is_none());

        let image = DecodedImage {
            eligible: true,
            grey_segmenter: GreyImage {
                width: 2,
                height: 2,
                pixels: vec![0.0, 0.25, 0.5, 1.0],
            },
            grey_classifier: GreyImage {
                width: 1,
                height: 1,
                pixels: vec![0.5],
            },
            // a 2×1 source: its display image is 512 wide and 1024 high
            rows: 2,
            columns: 1,
            grey_display: GreyImage {
                width: 512,
                height: 1024,
                pixels: vec![0.5; 512 * 1024],
            },
            ..DecodedImage::default()
        };
        let mut wire = Vec::new();
        write_reply(&mut wire, &Reply::Decoded(Box::new(image))).unwrap();
        match read_reply_io(&mut &wire[..], &request).unwrap() {
            Reply::Decoded(i) => {
                assert_eq!(i.grey_segmenter.pixels, vec![0.0, 0.25, 0.5, 1.0]);
                assert_eq!((i.grey_display.width, i.grey_display.height), (512, 1024));
            }
            Reply::Failed(r) => panic!("{r}"),
        }
        // a reply claiming a source larger than the decode limit is refused
        let capped = DecodeRequest {
            limits: DecodeLimits {
                max_pixels: 1,
                ..DecodeLimits::default()
            },
            ..request
        };
        assert!(read_reply_io(&mut &wire[..], &capped).is_err());
        // a reply claiming a larger image than asked for is refused
        let small = DecodeRequest {
            segmenter_size: 1,
            ..request
        };
        assert!(read_reply_io(&mut &wire[..], &small).is_err());
        // a request claiming more bytes than its limit
        let mut wire = Vec::new();
        let tiny = DecodeRequest {
            limits: DecodeLimits {
                max_file_bytes: 2,
                ..DecodeLimits::default()
            },
            ..request
        };
        write_request(&mut wire, &tiny, &mut &b"DICM"[..], 4).unwrap();
        assert!(read_request(&mut &wire[..]).is_err());
        // a file shorter than announced is the source's fault, not the helper's
        let mut wire = Vec::new();
        assert!(matches!(
            write_request(&mut wire, &request, &mut &b"DI"[..], 4),
            Err(Exchange::Source(_))
        ));
    }
}
