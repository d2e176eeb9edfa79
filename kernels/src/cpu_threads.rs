//! A software adapter's worker threads, found and pinned one per core (Linux).
//!
//! Lavapipe and llvmpipe run every dispatch on a pool of worker threads, one per core, that
//! sleep between dispatches and are woken for the next one. On Linux the scheduler often wakes
//! two of them on the same core while another core sits idle; they then share that core, taking
//! turns at its 4 ms tick, until the load balancer moves one. Measured with `perf sched timehist` during training steps of the
//! default model (2-core AMD EPYC, family 25 model 1, lavapipe, 2026-12-05): both workers on
//! core 0 in stretches of 3-4 ms while core 1 idled, the cores idle 14 % and 28 % of the time,
//! each worker ran 76 % of the time. With each worker pinned to its own core the same steps ran
//! 10-15 % faster (README, "Where vlsa stands on lavapipe").
//!
//! The driver's threads are not vlsa's, so they are found by what they do: threads that appear
//! while the adapter and device are opened ([`tasks`] before and after) and that run, during a
//! short busy dispatch, at least half as long as the busiest of them ([`cpu_ns`] before and
//! after; `Gpu` runs it). Those are pinned to the
//! cores this process may use, one each in turn. Nothing else is touched: vlsa's own threads,
//! the caller's, the driver's queue and shader-cache threads keep their affinity.

use std::collections::HashSet;

/// This process's threads (ids from `/proc/self/task`); empty where that is not readable.
pub(crate) fn tasks() -> HashSet<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return HashSet::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Nanoseconds thread `tid` of this process has run (`/proc/self/task/TID/schedstat`).
pub(crate) fn cpu_ns(tid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// The workers of a dispatch that kept every core busy for `wall_ns`: the threads that ran,
/// between the two readings, at least half as long as the busiest of them, provided that one
/// ran at least `share` of `wall_ns` (else none). Relative to the busiest rather than to the
/// wall time, because other processes may share the cores (a test suite running several
/// commands at once on 2 cores gave the workers under 30 % each).
pub(crate) fn busy(before: &[(i32, u64)], wall_ns: u64, share: f64) -> Vec<i32> {
    let ran: Vec<(i32, u64)> =
        before.iter().filter_map(|&(tid, t0)| Some((tid, cpu_ns(tid)?.saturating_sub(t0)))).collect();
    let most = ran.iter().map(|&(_, t)| t).max().unwrap_or(0);
    if most == 0 || (most as f64) < share * wall_ns as f64 {
        return Vec::new();
    }
    let mut found: Vec<i32> = ran.iter().filter(|&&(_, t)| 2 * t >= most).map(|&(tid, _)| tid).collect();
    found.sort_unstable();
    found
}

#[cfg(target_os = "linux")]
mod affinity {
    /// The cores this process may run on (its main thread's affinity mask, which `taskset` and
    /// cpusets set for the whole process).
    pub(crate) fn allowed_cores() -> Vec<usize> {
        // SAFETY: cpu_set_t is plain data, zeroed is a valid empty set, and the size passed is
        // the set's own.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(libc::getpid(), std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
        }
    }

    /// Restricts thread `tid` of this process to `cores`.
    pub(crate) fn set(tid: i32, cores: &[usize]) -> std::io::Result<()> {
        // SAFETY: as above; the set is built from valid core indices below CPU_SETSIZE.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in cores.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
                libc::CPU_SET(c, &mut set);
            }
            if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                let e = std::io::Error::last_os_error();
                // A worker that exited meanwhile (its device dropped) needs nothing.
                return if e.raw_os_error() == Some(libc::ESRCH) { Ok(()) } else { Err(e) };
            }
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod affinity {
    pub(crate) fn allowed_cores() -> Vec<usize> {
        Vec::new()
    }

    pub(crate) fn set(_tid: i32, _cores: &[usize]) -> std::io::Result<()> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "thread affinity is only set on Linux"))
    }
}

/// Worker threads found, the cores they were given and the cores the process may use.
#[derive(Debug, Clone, Default)]
pub(crate) struct Workers {
    /// Thread ids, ascending.
    pub tids: Vec<i32>,
    /// The process's cores when they were found (what unpinning restores).
    pub allowed: Vec<usize>,
    /// Whether each worker is now pinned to its own core.
    pub pinned: bool,
    /// Why they were not looked for or not pinned, where that is not the adapter's kind.
    pub note: Option<String>,
}

impl Workers {
    pub(crate) fn new(tids: Vec<i32>) -> Workers {
        Workers { tids, allowed: affinity::allowed_cores(), pinned: false, note: None }
    }

    /// None looked for, and why.
    pub(crate) fn skipped(why: impl Into<String>) -> Workers {
        Workers { note: Some(why.into()), ..Workers::default() }
    }

    /// The core worker `i` is pinned to: the allowed cores in turn.
    pub(crate) fn core_of(&self, i: usize) -> Option<usize> {
        (!self.allowed.is_empty()).then(|| self.allowed[i % self.allowed.len()])
    }

    /// Pins each worker to its own core (`on`), or gives every worker all allowed cores again.
    /// Workers that exited meanwhile are skipped.
    pub(crate) fn pin(&mut self, on: bool) -> std::io::Result<()> {
        if self.allowed.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "this process's cores are unknown"));
        }
        for (i, &tid) in self.tids.iter().enumerate() {
            let cores = if on { vec![self.core_of(i).expect("allowed is not empty")] } else { self.allowed.clone() };
            affinity::set(tid, &cores)?;
        }
        self.pinned = on;
        Ok(())
    }
}

/// Workgroups of the busy dispatch: enough to give each worker several on machines of up to
/// a few dozen cores.
const BUSY_WORKGROUPS: u32 = 128;

/// Multiply-adds per invocation per busy dispatch: about 5 ms on two lavapipe cores.
const BUSY_ITERS: u32 = 2048;

/// Runs the busy kernel (shaders/busy.wgsl) on `device` once untimed (lavapipe compiles a
/// kernel at its first dispatch), then calls `before` and runs it again until at least
/// `min_wall` has passed, waiting for each dispatch; returns what `before` returned and the
/// time the timed runs took. Raw wgpu, apart from the context's launcher: no pipeline cache
/// entry, pool buffer, dispatch count or profile record is left.
pub(crate) fn run_busy<T>(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    min_wall: std::time::Duration,
    before: impl FnOnce() -> T,
) -> std::result::Result<(T, std::time::Duration), String> {
    use wgpu::util::DeviceExt;
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("busy.wgsl"),
        source: wgpu::ShaderSource::Wgsl(
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/busy.wgsl")).into(),
        ),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("busy"),
        layout: None,
        module: &module,
        entry_point: Some("busy"),
        compilation_options: Default::default(),
        cache: None,
    });
    let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("busy params"),
        contents: bytemuck::cast_slice(&[BUSY_ITERS, 0, 0, 0]),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("busy out"),
        size: u64::from(BUSY_WORKGROUPS) * 64 * 4,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("busy"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: params.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: out.as_entire_binding() },
        ],
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(e.to_string());
    }
    let once = || -> std::result::Result<(), String> {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("busy") });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(BUSY_WORKGROUPS, 1, 1);
        }
        queue.submit([encoder.finish()]);
        device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    once()?;
    let taken = before();
    let start = std::time::Instant::now();
    for _ in 0..64 {
        once()?;
        if start.elapsed() >= min_wall {
            break;
        }
    }
    Ok((taken, start.elapsed()))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::{mpsc, Arc, Barrier};
    use std::time::{Duration, Instant};

    /// Test threads standing in for a driver's workers. Each reports its id, waits until the
    /// caller has read every thread's CPU time, runs its own share of CPU time (none when
    /// zero; CPU time, not wall time, so that a loaded machine only stretches the window),
    /// reports that it is done and stays alive until [`Threads::finish`] (a finished thread
    /// has no CPU time left to read).
    struct Threads {
        /// Thread ids in the order of the spins asked for (not the order they started in).
        tids: Vec<i32>,
        go: Arc<Barrier>,
        done: mpsc::Receiver<()>,
        release: Arc<Barrier>,
        handles: Vec<std::thread::JoinHandle<()>>,
    }

    impl Threads {
        fn start(spins: &[Duration]) -> Threads {
            let (id_send, ids) = mpsc::channel();
            let (done_send, done) = mpsc::channel();
            let go = Arc::new(Barrier::new(spins.len() + 1));
            let release = Arc::new(Barrier::new(spins.len() + 1));
            let handles = spins
                .iter()
                .enumerate()
                .map(|(i, &spin)| {
                    let (id_send, done_send) = (id_send.clone(), done_send.clone());
                    let (go, release) = (go.clone(), release.clone());
                    std::thread::spawn(move || {
                        // SAFETY: gettid has no preconditions.
                        let tid = unsafe { libc::gettid() };
                        id_send.send((i, tid)).unwrap();
                        go.wait();
                        let t0 = cpu_ns(tid).unwrap();
                        let mut x = 1u64;
                        while cpu_ns(tid).unwrap() - t0 < spin.as_nanos() as u64 {
                            for _ in 0..10_000 {
                                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                            }
                        }
                        std::hint::black_box(x);
                        done_send.send(()).unwrap();
                        release.wait();
                    })
                })
                .collect();
            let mut tids = vec![0; spins.len()];
            for _ in spins {
                let (i, tid) = ids.recv().unwrap();
                tids[i] = tid;
            }
            Threads { tids, go, done, release, handles }
        }

        /// Reads every thread's CPU time, lets them run, and returns the readings with the
        /// wall time until all are done and at least `window` has passed.
        fn run(&self, window: Duration) -> (Vec<(i32, u64)>, u64) {
            let cpu: Vec<(i32, u64)> = self.tids.iter().map(|&t| (t, cpu_ns(t).unwrap())).collect();
            let start = Instant::now();
            self.go.wait();
            for _ in &self.tids {
                self.done.recv().unwrap();
            }
            std::thread::sleep(window.saturating_sub(start.elapsed()));
            (cpu, start.elapsed().as_nanos() as u64)
        }

        fn finish(self) {
            self.release.wait();
            self.handles.into_iter().for_each(|h| h.join().unwrap());
        }
    }

    #[test]
    fn a_thread_that_ran_is_told_from_one_that_slept() {
        let before = tasks();
        let threads = Threads::start(&[Duration::from_millis(150), Duration::ZERO]);
        let started = threads.tids.clone();
        assert!(started.iter().all(|t| !before.contains(t) && tasks().contains(t)));
        let (cpu, wall) = threads.run(Duration::from_millis(200));
        let found = busy(&cpu, wall, 0.3);
        threads.finish();
        assert_eq!(
            found,
            vec![started[0]],
            "the spinning thread is {} and the sleeping one {}",
            started[0],
            started[1]
        );
    }

    #[test]
    fn workers_are_found_relative_to_the_busiest_and_none_when_nothing_ran() {
        // Two threads spinning 40 ms of a 200 ms window (as workers sharing their cores with
        // other processes would) are both found at a 5 % floor; a sleeping one is not; with
        // the floor above what the busiest ran, none is.
        let threads = Threads::start(&[40, 40, 0].map(Duration::from_millis));
        let tids = threads.tids.clone();
        let (cpu, wall) = threads.run(Duration::from_millis(200));
        let (low, high) = (busy(&cpu, wall, 0.05), busy(&cpu, wall, 0.9));
        threads.finish();
        let mut spinners = tids[..2].to_vec();
        spinners.sort_unstable();
        assert_eq!(low, spinners, "the sleeping thread is {}", tids[2]);
        assert!(high.is_empty());
    }

    #[test]
    fn pinning_sets_one_core_per_worker_and_unpinning_restores_them_all() {
        let threads = Threads::start(&[Duration::ZERO; 3]);
        let mut tids = threads.tids.clone();
        tids.sort_unstable();
        let mut w = Workers::new(tids.clone());
        assert!(!w.allowed.is_empty());
        let allowed_list = |tid: i32| {
            let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
            status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_string()
        };
        let everything: Vec<String> = tids.iter().map(|&t| allowed_list(t)).collect();
        w.pin(true).unwrap();
        for (i, &t) in tids.iter().enumerate() {
            assert_eq!(allowed_list(t), w.core_of(i).unwrap().to_string(), "worker {i}");
        }
        // One core each while there are cores enough.
        let distinct: HashSet<usize> = (0..3).filter_map(|i| w.core_of(i)).collect();
        assert_eq!(distinct.len(), 3.min(w.allowed.len()));
        w.pin(false).unwrap();
        assert_eq!(tids.iter().map(|&t| allowed_list(t)).collect::<Vec<_>>(), everything);
        threads.run(Duration::ZERO); // let the idle threads through to their end
        threads.finish();
        // A worker that has exited is no error.
        w.pin(true).unwrap();
    }
}
