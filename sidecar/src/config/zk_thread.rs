//! The thread the ZooKeeper config runs on.
//!
//! zookeeper-client reads its socket through async-io, whose reactor is driven by
//! whichever thread is blocked in `async_io::block_on`, or else by async-io's own thread.
//! On the control-plane tokio runtime every watch event and every reply woke async-io's
//! thread, then a runtime worker, and the worker's wake-up went through the runtime's
//! scheduler. Here one thread polls [`ZkConfig`] and the client's tasks itself, woken
//! straight from async-io's thread.
//!
//! It parks in `futures`' `block_on`, not in `async_io::block_on`: that one takes turns
//! with async-io's thread at driving the reactor, and after each turn async-io's thread
//! polls for the reactor again with ten short sleeps (50 µs to 10 ms). Measured with the
//! propagation bench (one sidecar, 200 changes), a change cost the sidecar 22–23 context
//! switches and 1.2 ms of CPU that way, 15 and 1.05 ms this way (async-io's thread 0.2 →
//! 0.085 ms), with the same ack latency; 1,000 sidecars on two cores acked sooner
//! (docs/benchmarks.md, the fleet's fifth round).
//!
//! The client spawns its session task through `spawns`; this thread's spawner queues such
//! tasks for the same loop. Tokio's timers (backoff, connect timeout) stay on the
//! control-plane runtime, entered here; nothing on the ack's path waits for them.

use std::{
    future::{Future, poll_fn},
    io,
    pin::{Pin, pin},
    task::{Context, Poll},
    thread::JoinHandle,
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch};

use super::zk::ZkConfig;

/// How long the client's tasks get to end after [`ZkConfig`] stops: closing the session
/// (which removes the instance znode at once rather than at its timeout) is one request.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

type Spawned = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Spawner(mpsc::UnboundedSender<Spawned>);

impl spawns::Spawn for Spawner {
    fn spawn(&self, task: spawns::Task) {
        // Refused only once the loop has ended: the task is dropped, its handle cancelled.
        let _ = self.0.send(Box::into_pin(task.future));
    }
}

/// A running [`ZkConfig`] on its thread.
pub struct ZkThread {
    stop: watch::Sender<bool>,
    /// Told once the [`ZkConfig`] is dropped.
    stopped: oneshot::Receiver<()>,
    thread: JoinHandle<()>,
}

impl ZkThread {
    /// Starts `config` on a thread of its own; `runtime` is the control plane's, for
    /// timers.
    pub fn start(config: ZkConfig, runtime: tokio::runtime::Handle) -> io::Result<Self> {
        let (stop, mut stop_rx) = watch::channel(false);
        let (stopped_tx, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("zookeeper".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                let (tx, rx) = mpsc::unbounded_channel();
                let spawner = Spawner(tx);
                let _spawner = spawns::enter(&spawner);
                let main = async {
                    tokio::select! {
                        () = config.run() => {}
                        _ = stop_rx.wait_for(|s| *s) => {}
                    }
                    let _ = stopped_tx.send(());
                };
                futures::executor::block_on(Tasks::new(rx).run(main, CLOSE_GRACE));
            })?;
        Ok(Self {
            stop,
            stopped,
            thread,
        })
    }

    /// Stops the config: once this returns no config change is applied any more. The
    /// client is dropped, which closes the session; the returned thread ends when that is
    /// done (or after [`CLOSE_GRACE`]).
    pub async fn stop(self) -> JoinHandle<()> {
        let _ = self.stop.send(true);
        // An error means the thread is gone already.
        let _ = self.stopped.await;
        self.thread
    }
}

/// The client's spawned tasks, polled beside the main future on every wake-up (there are a
/// handful, so one waker for all is enough).
struct Tasks {
    queue: mpsc::UnboundedReceiver<Spawned>,
    running: Vec<Spawned>,
}

impl Tasks {
    fn new(queue: mpsc::UnboundedReceiver<Spawned>) -> Self {
        Self {
            queue,
            running: Vec::new(),
        }
    }

    /// Polls `main` and the tasks until `main` ends, then the tasks until they end or
    /// `grace` has passed.
    async fn run(mut self, main: impl Future<Output = ()>, grace: Duration) {
        let mut main = pin!(main);
        poll_fn(|cx| {
            let done = main.as_mut().poll(cx).is_ready();
            self.poll(cx);
            if done { Poll::Ready(()) } else { Poll::Pending }
        })
        .await;
        let mut timer = pin!(async_io::Timer::after(grace));
        poll_fn(|cx| {
            self.poll(cx);
            if self.running.is_empty() || timer.as_mut().poll(cx).is_ready() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    fn poll(&mut self, cx: &mut Context<'_>) {
        loop {
            while let Poll::Ready(Some(task)) = self.queue.poll_recv(cx) {
                self.running.push(task);
            }
            self.running
                .retain_mut(|t| t.as_mut().poll(cx).is_pending());
            // Tasks spawned by those just polled get their first poll now.
            if self.queue.is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_tasks_run_beside_the_main_future_and_may_finish_after_it() {
        let (tx, rx) = mpsc::unbounded_channel();
        let spawner = Spawner(tx);
        let _spawner = spawns::enter(&spawner);
        let (done_tx, done) = std::sync::mpsc::channel();
        let main = async move {
            // A task that spawns another, awaited from the main future.
            let nested = spawns::spawn(async { spawns::spawn(async { 2 }).await });
            assert_eq!(nested.await.ok().and_then(Result::ok), Some(2));
            // A task still running when the main future ends.
            spawns::spawn(async move {
                async_io::Timer::after(Duration::from_millis(20)).await;
                let _ = done_tx.send(());
            });
        };
        futures::executor::block_on(Tasks::new(rx).run(main, Duration::from_secs(10)));
        assert!(
            done.try_recv().is_ok(),
            "a task running when the main future ended must be let finish within the grace"
        );
    }
}
