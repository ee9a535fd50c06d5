//! Proof that the production sandbox denies what it must.
//!
//! Each probe runs in a fresh process (this test binary re-executed with
//! `--probe NAME`) that applies exactly the production sandbox of a worker
//! (`confine` + `lock_down`; a few apply only its seccomp layer, as on a host
//! without namespaces), then tries one forbidden thing. The parent
//! asserts how it failed: the errno the call returned, or death by SIGSYS.
//! Probes that must succeed are there too, so that a sandbox that breaks
//! everything cannot pass.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::{recv, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use vtest_sandbox::{
    confine, lock_down, seccomp, violation, Phase, Profile, SandboxConfig, ViolationReport,
};

/// How a probe must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The call fails with this errno.
    Errno(i32),
    /// The process is killed by SIGSYS (seccomp).
    Sigsys,
    /// The call succeeds (a control).
    Ok,
}

/// What a probe runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// Exactly the production sandbox (`confine`, then `lock_down` for
    /// steady-state probes).
    Production,
    /// The seccomp layer alone (the violation reporter and the filters), as
    /// on a host that refuses every namespace: the worker is not PID 1.
    SeccompOnly,
}

const EXIT_OK: i32 = 0;
/// The inherited fd was not open before the sandbox (a broken test).
const EXIT_NOT_INHERITED: i32 = 4;
const EXIT_ERRNO_BASE: i32 = 10;

struct Probe {
    name: &'static str,
    setup: Setup,
    /// Steady: the full production sandbox of a serving worker. Init: the
    /// worker as the renderer starts (init-phase filter, which allows file
    /// opens), to prove the namespace and Landlock layers on their own.
    phase: Phase,
    profile: Profile,
    expect: Expect,
    /// Returns Ok on success, Err(errno) on failure.
    run: fn() -> Result<(), i32>,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn open(path: &str, flags: i32) -> Result<(), i32> {
    let c = CString::new(path).unwrap();
    // SAFETY: a valid C string; the fd is closed right away.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: we own fd.
    unsafe { libc::close(fd) };
    Ok(())
}

fn check(ret: libc::c_long) -> Result<(), i32> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// The broker's pid, passed by the parent (this test process).
fn parent_pid() -> i32 {
    std::env::var("PROBE_PARENT").unwrap().parse().unwrap()
}

fn probes() -> Vec<Probe> {
    let mut all = worker_probes();
    let render_server = render_server_probes(&all);
    all.extend(render_server);
    all
}

/// The render server's box: the same attempts as a worker's, where its
/// profile answers some differently (it may exec, but Landlock lets it run
/// only the render server; it may signal, but only inside its namespace).
/// Its filter kills without a report (the render server is foreign code).
fn render_server_probes(worker: &[Probe]) -> Vec<Probe> {
    use Expect::*;
    let like = |name: &str, as_name: &'static str, expect: Expect| {
        let p = worker
            .iter()
            .find(|p| p.name == name)
            .expect("a worker probe");
        Probe {
            name: as_name,
            setup: Setup::Production,
            phase: Phase::Init,
            profile: Profile::RenderServer,
            expect,
            run: p.run,
        }
    };
    let mut out = vec![
        like("open_etc_shadow", "rs_open_etc_shadow", Errno(libc::ENOENT)),
        like("list_root_home", "rs_list_root_home", Errno(libc::ENOENT)),
        like(
            "create_file_in_usr",
            "rs_create_file_in_usr",
            Errno(libc::EROFS),
        ),
        like("socket_inet", "rs_socket_inet", Sigsys),
        like("socket_netlink", "rs_socket_netlink", Sigsys),
        like("execve", "rs_execve_another_program", Errno(libc::EACCES)),
        like("fork", "rs_clone_with_other_flags", Sigsys),
        like("ptrace_parent", "rs_ptrace_parent", Sigsys),
        like(
            "kill_broker",
            "rs_kill_outside_its_namespace",
            Errno(libc::ESRCH),
        ),
        like("mount_tmpfs", "rs_mount_tmpfs", Sigsys),
        like("setuid_0", "rs_setuid_0", Sigsys),
        like("unshare_user", "rs_unshare_user", Sigsys),
        like("memfd_hugetlb", "rs_memfd_hugetlb", Sigsys),
        like(
            "mmap_write_exec_at_init",
            "rs_mmap_write_exec",
            Errno(libc::EACCES),
        ),
        like(
            "inherited_fd_is_closed",
            "rs_inherited_fd_is_closed",
            Errno(libc::EBADF),
        ),
        like(
            "alone_in_its_pid_namespace",
            "rs_alone_in_its_pid_namespace",
            Ok,
        ),
        like("read_libraries", "rs_read_libraries", Ok),
        // Vulkan drivers match Mesa's list by the guest's names: kept.
        like(
            "drirc_dir_is_empty",
            "rs_drirc_dir_keeps_mesas_list",
            Errno(libc::ENOTEMPTY),
        ),
    ];
    out.push(Probe {
        name: "rs_fork_a_context_process",
        setup: Setup::Production,
        phase: Phase::Init,
        profile: Profile::RenderServer,
        expect: Ok,
        run: || {
            // glibc's fork(), as the render server makes one process per
            // context.
            // SAFETY: the child exits at once without touching anything.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: leaving the child without running destructors.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            check(pid.into())?;
            // SAFETY: a valid out-pointer.
            check(unsafe { libc::waitpid(pid, &mut status, 0) }.into())
        },
    });
    out
}

fn worker_probes() -> Vec<Probe> {
    use Expect::*;
    use Phase::*;
    use Profile::*;
    use Setup::*;
    vec![
        Probe {
            name: "open_etc_shadow",
            setup: Production,
            phase: Init,
            profile: Llvmpipe,
            expect: Errno(libc::ENOENT),
            run: || open("/etc/shadow", libc::O_RDONLY),
        },
        Probe {
            name: "open_etc_passwd",
            setup: Production,
            phase: Init,
            profile: Llvmpipe,
            expect: Errno(libc::ENOENT),
            run: || open("/etc/passwd", libc::O_RDONLY),
        },
        Probe {
            name: "create_file_in_root",
            setup: Production,
            phase: Init,
            profile: Llvmpipe,
            expect: Errno(libc::EROFS),
            run: || open("/vtestd-probe", libc::O_CREAT | libc::O_WRONLY),
        },
        Probe {
            name: "create_file_in_usr",
            setup: Production,
            phase: Init,
            profile: Llvmpipe,
            expect: Errno(libc::EROFS),
            run: || open("/usr/vtestd-probe", libc::O_CREAT | libc::O_WRONLY),
        },
        Probe {
            name: "write_to_library",
            setup: Production,
            phase: Init,
            profile: Llvmpipe,
            // The read-only bind answers root; a normal user is refused by
            // the file's mode first.
            // SAFETY: geteuid has no preconditions.
            expect: Errno(if unsafe { libc::geteuid() } == 0 {
                libc::EROFS
            } else {
                libc::EACCES
            }),
            run: || open("/usr/lib/x86_64-linux-gnu/libc.so.6", libc::O_WRONLY),
        },
        Probe {
            name: "list_home",
            setup: Production,
            phase: Init,
            profile: Llvmpipe,
            expect: Errno(libc::ENOENT),
            run: || open("/home", libc::O_RDONLY | libc::O_DIRECTORY),
        },
        Probe {
            name: "list_root_home",
            setup: Production,
            phase: Init,
            profile: Llvmpipe,
            expect: Errno(libc::ENOENT),
            run: || open("/root", libc::O_RDONLY | libc::O_DIRECTORY),
        },
        Probe {
            name: "read_proc_1_environ",
            setup: Production,
            phase: Init,
            profile: Llvmpipe,
            expect: Errno(libc::ENOENT),
            run: || open("/proc/1/environ", libc::O_RDONLY),
        },
        Probe {
            name: "socket_inet",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            // SAFETY: plain syscall; the fd is leaked in a dying process.
            run: || check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) }.into()),
        },
        Probe {
            name: "socket_netlink",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            // SAFETY: as above.
            run: || check(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) }.into()),
        },
        Probe {
            name: "connect_to_broker_socket",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            // A new unix socket is the first step of any connect.
            // SAFETY: as above.
            run: || check(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) }.into()),
        },
        Probe {
            name: "execve",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            run: || {
                let prog = CString::new("/usr/bin/true").unwrap();
                let argv = [prog.as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                // SAFETY: valid NULL-terminated arrays.
                check(unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) }.into())
            },
        },
        Probe {
            name: "fork",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            run: || {
                // The raw system call, as an exploit would make it: glibc
                // 2.41's fork() blocks every signal around clone, and a
                // SIGSYS raised while blocked kills without running the
                // reporting handler (still a denial, but reported as a
                // bare SIGSYS).
                // SAFETY: the child (if any) exits at once.
                let pid = unsafe {
                    libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0)
                };
                if pid == 0 {
                    // SAFETY: leaving the child without running destructors.
                    unsafe { libc::_exit(0) };
                }
                check(pid)
            },
        },
        Probe {
            name: "ptrace_parent",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            run: || {
                // SAFETY: plain syscall.
                check(unsafe { libc::ptrace(libc::PTRACE_ATTACH, parent_pid(), 0, 0) })
            },
        },
        Probe {
            name: "kill_broker",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            run: || {
                // SAFETY: plain syscall (SIGCONT, harmless if it got through).
                check(unsafe { libc::kill(parent_pid(), libc::SIGCONT) }.into())
            },
        },
        Probe {
            name: "mount_tmpfs",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            run: || {
                let t = CString::new("tmpfs").unwrap();
                let d = CString::new("/usr").unwrap();
                // SAFETY: valid strings.
                check(
                    unsafe { libc::mount(t.as_ptr(), d.as_ptr(), t.as_ptr(), 0, std::ptr::null()) }
                        .into(),
                )
            },
        },
        Probe {
            name: "setuid_0",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            // SAFETY: plain syscall (raw, so glibc's setxid broadcast is not involved).
            run: || check(unsafe { libc::syscall(libc::SYS_setuid, 0) }),
        },
        Probe {
            name: "unshare_user",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            // SAFETY: plain syscall.
            run: || check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into()),
        },
        Probe {
            name: "mprotect_exec_gpu",
            setup: Production,
            phase: Steady,
            profile: Gpu,
            expect: Sigsys,
            run: mprotect_exec,
        },
        Probe {
            name: "tgkill_other_process",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            // SIGABRT, which abort() may send: the filter checks the target
            // too (pid 2 would be the namespace's next process; it has none,
            // so a tgkill that got through fails with ESRCH).
            // SAFETY: plain syscall.
            run: || check(unsafe { libc::syscall(libc::SYS_tgkill, 2, 2, libc::SIGABRT) }),
        },
        Probe {
            name: "tgkill_init_without_pid_namespace",
            setup: SeccompOnly,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            // Tgid 1 is the host's init here: no-tgkill.json traps every
            // tgkill. (Our own tid is no thread of tgid 1, so a tgkill that
            // got through would fail with ESRCH, signalling nothing.)
            run: || {
                // SAFETY: plain syscalls.
                check(unsafe { libc::syscall(libc::SYS_tgkill, 1, libc::gettid(), libc::SIGABRT) })
            },
        },
        Probe {
            name: "abort_without_pid_namespace",
            setup: SeccompOnly,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            // abort()'s tgkill on itself, not tgid 1: denied and reported;
            // the handler's own re-raise is denied in turn, and the worker
            // still dies of SIGSYS (not SIGABRT).
            run: || {
                // SAFETY: plain syscalls.
                check(unsafe {
                    libc::syscall(
                        libc::SYS_tgkill,
                        libc::getpid(),
                        libc::gettid(),
                        libc::SIGABRT,
                    )
                })
            },
        },
        Probe {
            name: "memfd_hugetlb",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            run: || {
                let name = CString::new("probe").unwrap();
                // SAFETY: valid name; the fd is leaked in a dying process.
                let fd = unsafe {
                    libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_HUGETLB)
                };
                check(fd.into())
            },
        },
        Probe {
            name: "madvise_hwpoison",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Sigsys,
            run: || {
                with_page(|p| {
                    // SAFETY: our own page (and without capabilities the kernel
                    // refuses MADV_HWPOISON with EPERM if it got through).
                    check(unsafe { libc::madvise(p, 4096, libc::MADV_HWPOISON) }.into())
                })
            },
        },
        Probe {
            name: "mmap_write_exec_llvmpipe",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Errno(libc::EACCES),
            run: || mmap_prot(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC),
        },
        Probe {
            name: "mprotect_write_exec_llvmpipe",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Errno(libc::EACCES),
            run: || {
                with_page(|p| {
                    // SAFETY: our own page.
                    check(
                        unsafe { libc::mprotect(p, 4096, libc::PROT_WRITE | libc::PROT_EXEC) }
                            .into(),
                    )
                })
            },
        },
        // Mesa's vertex-translation heap, exactly as rtasm asks for it: the
        // one W+X mapping the llvmpipe profile lets through
        // (no-wx-llvmpipe.json); any other shape still gets EACCES, and the
        // GPU profile, which maps nothing executable, kills.
        Probe {
            name: "mmap_rtasm_heap_llvmpipe",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Ok,
            run: || mmap_shape(RTASM_HEAP, RWX, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS),
        },
        Probe {
            name: "mmap_rtasm_heap_gpu",
            setup: Production,
            phase: Steady,
            profile: Gpu,
            expect: Sigsys,
            run: || mmap_shape(RTASM_HEAP, RWX, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS),
        },
        Probe {
            name: "mmap_write_exec_heap_size_shared",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Errno(libc::EACCES),
            run: || mmap_shape(RTASM_HEAP, RWX, libc::MAP_SHARED | libc::MAP_ANONYMOUS),
        },
        Probe {
            name: "mmap_write_exec_other_size",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Errno(libc::EACCES),
            run: || {
                mmap_shape(
                    RTASM_HEAP + 4096,
                    RWX,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                )
            },
        },
        Probe {
            name: "mmap_write_exec_without_read",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Errno(libc::EACCES),
            run: || {
                mmap_shape(
                    RTASM_HEAP,
                    libc::PROT_WRITE | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                )
            },
        },
        Probe {
            name: "mmap_write_exec_at_init",
            setup: Production,
            phase: Init,
            profile: Llvmpipe,
            expect: Errno(libc::EACCES),
            run: || mmap_prot(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC),
        },
        Probe {
            name: "inherited_fd_is_closed",
            setup: Production,
            phase: Init,
            profile: Llvmpipe,
            expect: Errno(libc::EBADF),
            run: || {
                // Open before the sandbox (run_probe checks), closed by it.
                // SAFETY: F_GETFD on an fd number touches no memory.
                check(unsafe { libc::fcntl(inherited_fd(), libc::F_GETFD) }.into())
            },
        },
        // Controls: what the worker must still be able to do.
        Probe {
            name: "tgkill_itself",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Ok,
            run: tgkill_itself,
        },
        Probe {
            name: "madvise_dontneed",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Ok,
            run: || {
                with_page(|p| {
                    // SAFETY: our own page.
                    check(unsafe { libc::madvise(p, 4096, libc::MADV_DONTNEED) }.into())
                })
            },
        },
        Probe {
            name: "mprotect_exec_llvmpipe",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Ok,
            // Writable, then executable: LLVM's JIT.
            run: mprotect_exec,
        },
        Probe {
            name: "open_in_steady_state",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Errno(libc::EACCES),
            run: || open("/usr/lib/x86_64-linux-gnu/libc.so.6", libc::O_RDONLY),
        },
        Probe {
            name: "shared_memory_and_threads",
            setup: Production,
            phase: Steady,
            profile: Llvmpipe,
            expect: Ok,
            run: || {
                let shm = vtest_renderer_free_memfd()?;
                drop(shm);
                pthread_round_trip()
            },
        },
        Probe {
            name: "alone_in_its_pid_namespace",
            setup: Production,
            phase: Init,
            profile: Llvmpipe,
            expect: Ok,
            run: || {
                // SAFETY: plain syscall.
                if unsafe { libc::getpid() } == 1 {
                    Result::Ok(())
                } else {
                    Err(0)
                }
            },
        },
        Probe {
            name: "read_libraries",
            setup: Production,
            phase: Init,
            profile: Llvmpipe,
            expect: Ok,
            run: || open("/usr/lib/x86_64-linux-gnu/libc.so.6", libc::O_RDONLY),
        },
        Probe {
            name: "drirc_dir_is_empty",
            setup: Production,
            phase: Init,
            profile: Llvmpipe,
            expect: Ok,
            run: drirc_dir_is_empty,
        },
        Probe {
            name: "drirc_dir_is_empty_gpu",
            setup: Production,
            phase: Init,
            profile: Gpu,
            expect: Ok,
            run: drirc_dir_is_empty,
        },
    ]
}

/// Ok when Mesa's drirc directory is there and empty; ENOTEMPTY when it
/// lists files (the host's Mesa ships at least one), ENOENT without it.
fn drirc_dir_is_empty() -> Result<(), i32> {
    let entries = std::fs::read_dir(vtest_sandbox::DRIRC_DIR)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?
        .count();
    if entries == 0 {
        Ok(())
    } else {
        Err(libc::ENOTEMPTY)
    }
}

/// Starts and joins a thread the way Mesa does (pthread_create, not std).
fn pthread_round_trip() -> Result<(), i32> {
    extern "C" fn body(_: *mut libc::c_void) -> *mut libc::c_void {
        std::ptr::null_mut()
    }
    let mut thread: libc::pthread_t = 0;
    // SAFETY: a valid out-pointer and a function that touches nothing.
    let r =
        unsafe { libc::pthread_create(&mut thread, std::ptr::null(), body, std::ptr::null_mut()) };
    if r != 0 {
        return Err(r);
    }
    // SAFETY: joining the thread we started.
    let r = unsafe { libc::pthread_join(thread, std::ptr::null_mut()) };
    if r != 0 {
        Err(r)
    } else {
        Ok(())
    }
}

/// `f` on a fresh anonymous read-write page, unmapped afterwards.
fn with_page(f: impl FnOnce(*mut libc::c_void) -> Result<(), i32>) -> Result<(), i32> {
    // SAFETY: an anonymous private mapping we own and unmap.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(errno());
    }
    let r = f(p);
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(p, 4096) };
    r
}

/// The size of Mesa's rtasm heap (`EXEC_HEAP_SIZE`, 10 MiB).
const RTASM_HEAP: usize = 10 << 20;
const RWX: i32 = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;

/// An anonymous mapping of `len` bytes with `prot` and `flags`, at an
/// address the kernel picks, unmapped at once.
fn mmap_shape(len: usize, prot: i32, flags: i32) -> Result<(), i32> {
    // SAFETY: an anonymous mapping, unmapped at once.
    unsafe {
        let p = libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0);
        if p == libc::MAP_FAILED {
            return Err(errno());
        }
        libc::munmap(p, len);
    }
    Ok(())
}

/// An anonymous page mapped with `prot` in one call.
fn mmap_prot(prot: i32) -> Result<(), i32> {
    mmap_shape(4096, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
}

static ABORT_HANDLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_abort(_: libc::c_int) {
    ABORT_HANDLED.store(true, Ordering::SeqCst);
}

/// abort()'s signal on itself arrives (a handler catches it: PID 1 of a
/// namespace ignores signals it does not handle).
fn tgkill_itself() -> Result<(), i32> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        if libc::signal(libc::SIGABRT, on_abort as *const () as libc::sighandler_t) == libc::SIG_ERR
        {
            return Err(errno());
        }
        check(libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::gettid(),
            libc::SIGABRT,
        ))?;
    }
    if ABORT_HANDLED.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(0)
    }
}

/// The fd the parent opened without close-on-exec for every probe.
fn inherited_fd() -> i32 {
    std::env::var("PROBE_INHERITED_FD")
        .unwrap()
        .parse()
        .unwrap()
}

fn mprotect_exec() -> Result<(), i32> {
    // SAFETY: an anonymous private mapping we own and unmap.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(errno());
        }
        let r = libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC);
        let e = errno();
        libc::munmap(p, 4096);
        if r < 0 {
            Err(e)
        } else {
            Ok(())
        }
    }
}

/// A sealed memfd as the worker makes them, without the renderer crate.
fn vtest_renderer_free_memfd() -> Result<OwnedFd, i32> {
    let name = CString::new("probe").unwrap();
    // SAFETY: valid name.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: fd is ours.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: plain syscalls on our fd.
    unsafe {
        if libc::ftruncate(fd.as_raw_fd(), 4096) < 0
            || libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            ) < 0
        {
            return Err(errno());
        }
    }
    Ok(fd)
}

/// The record a probe's SIGSYS handler sends (the worker sends its control
/// channel's packet instead): a tag, then the syscall number.
const REPORT_TAG: &[u8; 8] = b"PROBE-NR";

/// The SIGSYS report on stdin, as a worker's is on its control channel.
fn report() -> ViolationReport {
    let mut template = REPORT_TAG.to_vec();
    template.extend_from_slice(&[0; 8]);
    ViolationReport::new(std::io::stdin().as_fd().as_raw_fd(), &template, 8).unwrap()
}

/// The syscall number in a probe's report.
fn reported_syscall(record: &[u8]) -> Option<i64> {
    let nr = record.strip_prefix(REPORT_TAG)?;
    Some(i64::from_le_bytes(nr.try_into().ok()?))
}

/// The seccomp layer of `confine`, alone.
fn seccomp_only(probe: &Probe) {
    let installed = violation::install_reporter(Some(&report()))
        .and_then(|()| seccomp::install(probe.profile, Phase::Init));
    if let Err(e) = installed {
        eprintln!("seccomp failed: {e}");
        std::process::exit(2)
    }
    // SAFETY: plain syscall.
    eprintln!("{}: seccomp only, pid {}", probe.name, unsafe {
        libc::getpid()
    });
}

/// Child side: sandbox, then the probe; the exit code says how it went.
fn run_probe(name: &str) -> ! {
    let probe = probes()
        .into_iter()
        .find(|p| p.name == name)
        .expect("known probe");
    // SAFETY: F_GETFD on an fd number touches no memory.
    if unsafe { libc::fcntl(inherited_fd(), libc::F_GETFD) } < 0 {
        eprintln!("{name}: fd {} was not inherited", inherited_fd());
        std::process::exit(EXIT_NOT_INHERITED);
    }
    if probe.setup == Setup::SeccompOnly {
        seccomp_only(&probe);
    } else if probe.profile == Profile::RenderServer {
        let program = std::path::PathBuf::from("/usr/libexec/virgl_render_server");
        let config = SandboxConfig::for_render_server(None, None, program);
        let report = confine(&config).unwrap_or_else(|e| {
            eprintln!("confine failed: {e}");
            std::process::exit(2)
        });
        eprintln!("{name}: {report:?}");
    } else {
        let mut config = SandboxConfig::for_worker(None, None, Some(report()));
        config.profile = probe.profile;
        let report = confine(&config).unwrap_or_else(|e| {
            eprintln!("confine failed: {e}");
            std::process::exit(2)
        });
        eprintln!("{name}: {report:?}");
    }
    if probe.phase == Phase::Steady {
        lock_down(probe.profile).unwrap_or_else(|e| {
            eprintln!("lock_down failed: {e}");
            std::process::exit(3)
        });
    }
    match (probe.run)() {
        Ok(()) => std::process::exit(EXIT_OK),
        Err(e) => std::process::exit(EXIT_ERRNO_BASE + e),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--probe") {
        run_probe(&args[i + 1]);
    }
    // `cargo test` passes harness flags; a filter selects probes by name.
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned();
    // Every probe inherits this fd (no close-on-exec), as a worker would
    // one its parent leaked; the sandbox must close it.
    let leaked = CString::new("/dev/null").unwrap();
    // SAFETY: a valid path; the fd lives as long as this process.
    let leaked = unsafe { libc::open(leaked.as_ptr(), libc::O_RDONLY) };
    assert!(leaked >= 0, "open /dev/null: {}", errno());
    let mut failures = Vec::new();
    let mut ran = 0;
    for probe in probes() {
        if filter
            .as_ref()
            .is_some_and(|f| !probe.name.contains(f.as_str()))
        {
            continue;
        }
        ran += 1;
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--probe", probe.name])
            .env("PROBE_PARENT", std::process::id().to_string())
            .env("PROBE_INHERITED_FD", leaked.to_string())
            .stdin(Stdio::from(theirs))
            .output()
            .unwrap();
        let got = match (out.status.code(), out.status.signal()) {
            (Some(EXIT_OK), _) => Expect::Ok,
            (Some(c), _) if c >= EXIT_ERRNO_BASE => Expect::Errno(c - EXIT_ERRNO_BASE),
            (_, Some(libc::SIGSYS)) => Expect::Sigsys,
            other => {
                failures.push(format!(
                    "{}: sandbox set-up failed {other:?}: {}",
                    probe.name,
                    String::from_utf8_lossy(&out.stderr)
                ));
                continue;
            }
        };
        // A SIGSYS death must have been reported, in one record.
        let mut record = [0u8; 64];
        let reported = recv(ours.as_raw_fd(), &mut record, MsgFlags::MSG_DONTWAIT)
            .ok()
            .and_then(|n| reported_syscall(&record[..n]))
            .map(|nr| {
                vtest_sandbox::seccomp::syscall_name(nr)
                    .unwrap_or("?")
                    .to_string()
            });
        // The render server's filter kills unreported (no handler of ours).
        let needs_report = got == Expect::Sigsys && probe.profile != Profile::RenderServer;
        let verdict = if got == probe.expect && (!needs_report || reported.is_some()) {
            "ok"
        } else {
            failures.push(format!(
                "{}: expected {:?}, got {got:?} (reported {reported:?}); stderr: {}",
                probe.name,
                probe.expect,
                String::from_utf8_lossy(&out.stderr)
            ));
            "FAILED"
        };
        println!(
            "probe {:34} {:?}/{:?}/{:?} {:?} reported={:?} ... {verdict}",
            probe.name, probe.setup, probe.phase, probe.profile, got, reported
        );
    }
    println!("\n{ran} probes, {} failed", failures.len());
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("{f}");
        }
        std::process::exit(1);
    }
}
