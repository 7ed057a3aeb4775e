//! `containerLogs` sources read from files written and rotated the way the kubelet and
//! containerd do: `/var/log/pods/<ns>_<pod>_<uid>/<container>/<restart>.log`, CRI records,
//! `P` parts of long lines, rotation by rename to `0.log.<time>` then gzip, a restart's
//! `1.log`. The reader is the library's (topology + file reader + sinks), as the node
//! agent runs it per pod; the sinks write real files.

mod common;

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Sender, channel},
    },
    thread::JoinHandle,
    time::Duration,
};

use common::{Scratch, line, wait_until};
use servicelog_e2e::receiver::Receiver;
use servicelog_sidecar::{
    metrics::Metrics,
    pipeline::Origin,
    sources::{
        cri::PodLogs,
        file::{ReadRate, Tailer, TailerLinks, TailerOptions},
    },
    topology::Topology,
};

const WAIT: Duration = Duration::from_secs(20);

/// Writes a container's output as containerd does.
struct Kubelet {
    pod_dir: PathBuf,
}

impl Kubelet {
    fn new(root: &Path) -> Self {
        let pod_dir = PodLogs::dir(
            root,
            "shop",
            "checkout-7d9f",
            "0b5c4c1e-1111-2222-3333-444455556666",
        );
        Self { pod_dir }
    }

    fn file(&self, container: &str, restart: u32) -> PathBuf {
        let dir = self.pod_dir.join(container);
        fs::create_dir_all(&dir).expect("creating the container's log directory");
        dir.join(format!("{restart}.log"))
    }

    /// Appends `records` (each `stream tag message`) with a timestamp, in one write.
    fn write(&self, container: &str, restart: u32, records: &[String]) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file(container, restart))
            .expect("opening the container log");
        let mut buf = String::new();
        for r in records {
            buf.push_str("2026-12-07T17:27:32.123456789Z ");
            buf.push_str(r);
            buf.push('\n');
        }
        f.write_all(buf.as_bytes())
            .expect("writing the container log");
    }

    /// Complete stdout lines.
    fn print(&self, container: &str, restart: u32, lines: &[String]) {
        let records: Vec<String> = lines.iter().map(|l| format!("stdout F {l}")).collect();
        self.write(container, restart, &records);
    }

    /// The kubelet's rotation: the live file renamed `<restart>.log.<time>` (containerd
    /// then reopens the path, a new file). Returns the rotated path.
    fn rotate(&self, container: &str, restart: u32, time: &str) -> PathBuf {
        let live = self.file(container, restart);
        let rotated = live.with_file_name(format!("{restart}.log.{time}"));
        fs::rename(&live, &rotated).expect("rotating the container log");
        File::create(&live).expect("reopening the container log");
        rotated
    }

    /// The kubelet's compression of an older rotated file: `.gz` written, the file removed.
    /// Stored, not deflated: a reader that wrongly read the `.gz` would see the records
    /// again (duplicates), not binary without newlines that it might never route.
    fn compress(&self, rotated: &Path) {
        let data = fs::read(rotated).expect("reading the rotated log");
        let gz = rotated.with_file_name(format!(
            "{}.gz",
            rotated
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a file name")
        ));
        let mut enc = flate2::write::GzEncoder::new(
            File::create(&gz).expect("creating .gz"),
            flate2::Compression::none(),
        );
        enc.write_all(&data).expect("compressing");
        enc.finish().expect("finishing the .gz");
        fs::remove_file(rotated).expect("removing the rotated log");
    }
}

/// One pod's reader, as the agent runs it: a topology whose `containerLogs` sources read
/// the pod's directory, and the file reader thread.
struct PodReader {
    topology: Topology,
    metrics: Metrics,
    stop: Arc<AtomicBool>,
    wake: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl PodReader {
    fn start(state: &Path, logs: PodLogs, spec_yaml: &str) -> Self {
        Self::start_at(state, logs, spec_yaml, None)
    }

    /// Reading at most at `rate` lines a second, as the agent's `--pod-rate-limit`.
    fn start_at(state: &Path, logs: PodLogs, spec_yaml: &str, rate: Option<ReadRate>) -> Self {
        fs::create_dir_all(state).expect("creating the state dir");
        let metrics = Metrics::new();
        let (wake, wake_rx) = channel();
        let topology = Topology::new(
            metrics.clone(),
            state,
            &state.join("credentials"),
            Origin {
                pod: "checkout-7d9f".into(),
                namespace: "shop".into(),
                ..Origin::default()
            },
            wake.clone(),
        )
        .with_pod_logs(logs);
        topology
            .apply(&common::envelope(1, spec_yaml))
            .expect("the config applies");
        let stop = Arc::new(AtomicBool::new(false));
        let mut opts = TailerOptions::new(state.to_owned());
        opts.rotate_grace = Duration::from_millis(300);
        opts.rescan = Duration::from_millis(200);
        opts.rate = rate;
        let tailer = Tailer::new(
            opts,
            TailerLinks {
                unthrottled: Default::default(),
                current: topology.files(),
                stop: stop.clone(),
                wake: wake_rx,
                waker: wake.clone(),
                eof: None,
            },
        );
        let thread = std::thread::spawn(move || tailer.run());
        Self {
            topology,
            metrics,
            stop,
            wake,
            thread: Some(thread),
        }
    }

    /// Stops reading, lets the sinks write what was read, checkpoints (as at SIGTERM).
    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(());
        if let Some(t) = self.thread.take() {
            t.join().expect("the file reader ends");
        }
        self.topology.clear();
        wait_until(
            "the sinks to finish",
            WAIT,
            || self.topology.sinks_running().is_empty(),
            String::new,
        );
    }

    fn metric(&self, sample: &str) -> Option<f64> {
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
    }
}

impl Drop for PodReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(());
    }
}

/// An http sink: the node agent refuses file sinks that containerLogs events reach.
fn spec(out: &Receiver, source: &str) -> String {
    format!(
        "sources: [{{name: stdout, containerLogs: {source}}}]\n\
         sinks: [{{name: out, http: {{url: \"{}\", batch: {{timeout: 100ms}}}}}}]\n\
         defaultTo: [out]\n",
        out.url("/out")
    )
}

/// The lines `rx` took, in order, as the app printed them: without the `_servicelog`
/// member (source, pod, namespace) the http sink appends to each JSON line.
fn received(rx: &Receiver) -> Vec<String> {
    rx.requests()
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .flat_map(|r| {
            String::from_utf8_lossy(&r.body)
                .lines()
                .map(|l| match l.rfind(",\"_servicelog\":") {
                    Some(at) => format!("{}}}", &l[..at]),
                    None => l.to_owned(),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every seq in `0..n` taken exactly once, and no other.
fn exactly_once(rx: &Receiver, n: u64) {
    let counts = rx.taken_seqs();
    let wrong: Vec<(&u64, &usize)> = counts
        .iter()
        .filter(|(s, c)| **c != 1 || **s >= n)
        .collect();
    let missing: Vec<u64> = (0..n).filter(|s| !counts.contains_key(s)).collect();
    assert!(
        wrong.is_empty() && missing.is_empty(),
        "expected every line 0..{n} exactly once: missing {missing:?}, wrong counts {wrong:?}"
    );
}

fn pod_logs(kubelet: &Kubelet) -> PodLogs {
    PodLogs {
        dir: kubelet.pod_dir.clone(),
        containers: vec!["app".into()],
        allow_file_sinks: false,
    }
}

#[test]
fn given_cri_records_when_read_then_sinks_get_the_applications_lines_with_parts_joined() {
    let s = Scratch::new();
    let kubelet = Kubelet::new(&s.path("pods"));
    let out = Receiver::start();
    // stderr is not read; the sidecar container's output is not an app container's.
    let reader = PodReader::start(
        &s.state(),
        pod_logs(&kubelet),
        &spec(&out, "{streams: [stdout], format: json}"),
    );
    let long = "x".repeat(40_000);
    kubelet.write(
        "app",
        0,
        &[
            format!("stdout F {}", line(0, "info")),
            "stderr F an error on stderr".into(),
            format!("stdout P {{\"seq\":1,\"msg\":\"{}", &long[..16_000]),
            "stderr P a part on stderr".into(),
            format!("stdout P {}", &long[16_000..32_000]),
            format!("stdout F {}\"}}", &long[32_000..]),
        ],
    );
    // A record that is not the runtime's, then a well-formed one.
    let mut f = OpenOptions::new()
        .append(true)
        .open(kubelet.file("app", 0))
        .expect("opening");
    f.write_all(b"garbage without a timestamp\n")
        .expect("writing");
    kubelet.print("app", 0, &[line(2, "warn")]);
    kubelet.print("servicelog-sidecar", 0, &[line(99, "info")]);
    wait_until(
        "3 lines in the sink",
        WAIT,
        || received(&out).len() >= 3,
        || format!("{:?}", received(&out)),
    );
    let lines = received(&out);
    assert_eq!(
        lines.len(),
        3,
        "only stdout of the app container: {lines:?}"
    );
    assert_eq!(
        lines[0],
        line(0, "info"),
        "the message as printed, no CRI prefix"
    );
    assert_eq!(
        lines[1],
        format!("{{\"seq\":1,\"msg\":\"{long}\"}}"),
        "three parts joined into the line the app printed"
    );
    assert_eq!(lines[2], line(2, "warn"));
    wait_until(
        "the malformed record counted",
        WAIT,
        || reader.metric("servicelog_lines_unparsed_total{source=\"stdout\"}") == Some(1.0),
        || reader.metrics.render(),
    );
    reader.stop();
}

#[test]
fn given_kubelet_rotation_and_a_container_restart_then_every_line_is_read_once_and_gz_never() {
    let s = Scratch::new();
    let kubelet = Kubelet::new(&s.path("pods"));
    let out = Receiver::start();
    let reader = PodReader::start(
        &s.state(),
        pod_logs(&kubelet),
        &spec(&out, "{format: json}"),
    );
    let batch = |from: u64, to: u64| (from..to).map(|i| line(i, "info")).collect::<Vec<_>>();
    kubelet.print("app", 0, &batch(0, 100));
    // Rotated while the reader may still be behind: it finishes the renamed file by inode.
    let first = kubelet.rotate("app", 0, "20261207-173000");
    kubelet.print("app", 0, &batch(100, 200));
    wait_until(
        "lines 0..200 in the sink",
        WAIT,
        || received(&out).len() >= 200,
        || format!("{} lines", received(&out).len()),
    );
    // The next rotation compresses the older one (never read: not `*.log`).
    let second = kubelet.rotate("app", 0, "20261207-174000");
    kubelet.compress(&first);
    kubelet.print("app", 0, &batch(200, 250));
    // The container restarts: the runtime writes `1.log` beside `0.log`.
    kubelet.print("app", 1, &batch(250, 300));
    wait_until(
        "lines 0..300 in the sink",
        WAIT,
        || received(&out).len() >= 300,
        || format!("{} lines", received(&out).len()),
    );
    kubelet.compress(&second);
    kubelet.print("app", 1, &batch(300, 310));
    wait_until(
        "lines 0..310 in the sink",
        WAIT,
        || received(&out).len() >= 310,
        || format!("{} lines", received(&out).len()),
    );
    // Long enough for a .gz to have been read, had it matched: its bytes would be
    // malformed records, counted.
    std::thread::sleep(Duration::from_millis(500));
    let unparsed = reader.metric("servicelog_lines_unparsed_total{source=\"stdout\"}");
    reader.stop();
    exactly_once(&out, 310);
    assert_eq!(unparsed.unwrap_or(0.0), 0.0, "a .gz file was read");
}

#[test]
fn given_a_restart_with_a_line_in_progress_then_the_line_comes_whole_once_and_nothing_repeats() {
    let s = Scratch::new();
    let kubelet = Kubelet::new(&s.path("pods"));
    let out = Receiver::start();
    let source = "{format: json}";
    let reader = PodReader::start(&s.state(), pod_logs(&kubelet), &spec(&out, source));
    kubelet.print(
        "app",
        0,
        &(0..50).map(|i| line(i, "info")).collect::<Vec<_>>(),
    );
    let whole = line(50, "info");
    let (head, tail) = whole.split_at(20);
    kubelet.write("app", 0, &[format!("stdout P {head}")]);
    wait_until(
        "lines 0..50 in the sink",
        WAIT,
        || received(&out).len() >= 50,
        || format!("{} lines", received(&out).len()),
    );
    reader.stop();
    assert_eq!(
        received(&out).len(),
        50,
        "the line in progress is held at shutdown"
    );

    kubelet.write("app", 0, &[format!("stdout F {tail}")]);
    kubelet.print(
        "app",
        0,
        &(51..60).map(|i| line(i, "info")).collect::<Vec<_>>(),
    );
    let reader = PodReader::start(&s.state(), pod_logs(&kubelet), &spec(&out, source));
    wait_until(
        "lines 0..60 in the sink",
        WAIT,
        || received(&out).len() >= 60,
        || format!("{} lines", received(&out).len()),
    );
    std::thread::sleep(Duration::from_millis(300));
    reader.stop();
    exactly_once(&out, 60);
}

#[test]
fn given_a_restart_while_a_stdout_line_is_in_progress_then_the_stderr_lines_routed_meanwhile_are_not_sent_again()
 {
    let s = Scratch::new();
    let kubelet = Kubelet::new(&s.path("pods"));
    let out = Receiver::start();
    let source = "{format: json}";
    let reader = PodReader::start(&s.state(), pod_logs(&kubelet), &spec(&out, source));
    kubelet.print(
        "app",
        0,
        &(0..10).map(|i| line(i, "info")).collect::<Vec<_>>(),
    );
    // stdout's line 20 is split; stderr prints lines 10..20 while its end has not come.
    let split = line(20, "info");
    let (head, tail) = split.split_at(15);
    let mut records = vec![format!("stdout P {head}")];
    records.extend((10..20).map(|i| format!("stderr F {}", line(i, "error"))));
    kubelet.write("app", 0, &records);
    wait_until(
        "lines 0..20 in the sink (stdout's split line held)",
        WAIT,
        || received(&out).len() >= 20,
        || format!("{:?}", received(&out)),
    );
    reader.stop();
    assert_eq!(
        received(&out).len(),
        20,
        "the split line is held at shutdown"
    );
    let checkpoints = fs::read_to_string(s.state().join("checkpoints.json"))
        .expect("the checkpoints are written at shutdown");
    assert!(
        checkpoints.contains("\"streams\""),
        "the checkpoint is held at the split line and records each stream's progress: {checkpoints}"
    );

    kubelet.write(
        "app",
        0,
        &[
            format!("stdout F {tail}"),
            format!("stderr F {}", line(21, "error")),
        ],
    );
    kubelet.print(
        "app",
        0,
        &(22..30).map(|i| line(i, "info")).collect::<Vec<_>>(),
    );
    let reader = PodReader::start(&s.state(), pod_logs(&kubelet), &spec(&out, source));
    wait_until(
        "lines 0..30 in the sink",
        WAIT,
        || received(&out).len() >= 30,
        || format!("{} lines", received(&out).len()),
    );
    std::thread::sleep(Duration::from_millis(300));
    reader.stop();
    exactly_once(&out, 30);
    assert!(
        received(&out).contains(&split),
        "the split line comes whole: {:?}",
        received(&out)
    );
}

#[test]
fn given_a_read_rate_when_the_reader_is_stopped_while_it_waits_then_a_restart_delivers_every_line_once()
 {
    const LINES: u64 = 5_000;
    let s = Scratch::new();
    let kubelet = Kubelet::new(&s.path("pods"));
    let out = Receiver::start();
    let source = "{format: json}";
    let rate = ReadRate {
        per_second: std::num::NonZeroU32::new(2_000).expect("non-zero"),
        burst: std::num::NonZeroU32::new(500).expect("non-zero"),
    };
    kubelet.print(
        "app",
        0,
        &(0..LINES).map(|i| line(i, "info")).collect::<Vec<_>>(),
    );
    let started = std::time::Instant::now();
    let reader = PodReader::start_at(
        &s.state(),
        pod_logs(&kubelet),
        &spec(&out, source),
        Some(rate),
    );
    wait_until(
        "the first lines in the sink",
        WAIT,
        || !received(&out).is_empty(),
        String::new,
    );
    std::thread::sleep(Duration::from_millis(800));
    let read_for = started.elapsed();
    let paced = received(&out).len() as u64;
    // The burst, then the rate; plus one chunk let through by the stop below.
    let most = 500 + (2_000.0 * read_for.as_secs_f64()) as u64;
    assert!(
        paced <= most,
        "{paced} lines delivered after {read_for:?}: more than the burst and the rate allow ({most})"
    );
    reader.stop();
    let at_stop = received(&out).len() as u64;
    assert!(
        at_stop < LINES,
        "the reader was paced: {at_stop} of {LINES} lines when stopped"
    );
    let reader = PodReader::start(&s.state(), pod_logs(&kubelet), &spec(&out, source));
    wait_until(
        "every line in the sink",
        WAIT,
        || received(&out).len() as u64 >= LINES,
        || format!("{} lines", received(&out).len()),
    );
    std::thread::sleep(Duration::from_millis(300));
    reader.stop();
    exactly_once(&out, LINES);
}
