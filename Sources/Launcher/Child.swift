import ChatCore
import Foundation
import Logging
import Synchronization

/// One supervised child process: restarted with backoff when it exits on its own.
///
/// Spawned with posix_spawn and an empty signal mask and default signal
/// dispositions: threads of the launcher block signals, and a child must not
/// inherit that (redis-server would never see its SIGTERM).
///
/// The supervisor loop and the shutdown run in different tasks: the child's state sits
/// behind one lock.
final class Child: Sendable {
    let name: String
    let executable: String
    let arguments: [String]

    private struct State {
        var pid: pid_t?
        var backoff = Backoff(base: 0.25, cap: 10)
        var startedAt = Date.distantPast
        var restartAt: Date?
        var restarts = 0
    }

    private let state = Mutex(State())

    init(name: String, executable: String, arguments: [String]) {
        self.name = name
        self.executable = executable
        self.arguments = arguments
    }

    var pid: pid_t? { state.withLock { $0.pid } }
    var restarts: Int { state.withLock { $0.restarts } }

    func start(logger: Logger) throws {
        try state.withLock { try start(&$0, logger: logger) }
    }

    private func start(_ s: inout State, logger: Logger) throws {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, nil, &attr, argv, environ)
        guard rc == 0 else { throw Options.Invalid("cannot start \(executable): \(String(cString: strerror(rc)))") }
        s.pid = child
        s.startedAt = Date()
        s.restartAt = nil
        logger.info("started", metadata: ["child": "\(name)", "pid": "\(child)"])
    }

    /// Reaps the child if it exited; returns its wait status then.
    private static func reap(_ s: inout State) -> Int32? {
        guard let p = s.pid else { return nil }
        var status: Int32 = 0
        let r = waitpid(p, &status, WNOHANG)
        if r == p || (r < 0 && errno == ECHILD) {
            s.pid = nil
            return status
        }
        return nil
    }

    var isRunning: Bool {
        state.withLock { s in
            _ = Self.reap(&s)
            return s.pid != nil
        }
    }

    /// Restarts a child that exited; the backoff grows while it keeps crashing soon after start.
    func superviseStep(logger: Logger) {
        state.withLock { s in
            let now = Date()
            if let at = s.restartAt {
                guard now >= at else { return }
                s.restarts += 1
                do { try start(&s, logger: logger) } catch {
                    logger.error("cannot restart", metadata: ["child": "\(name)", "error": "\(error)"])
                    s.restartAt = now.addingTimeInterval(s.backoff.next())
                }
                return
            }
            guard let status = Self.reap(&s) else { return }
            if now.timeIntervalSince(s.startedAt) > 30 { s.backoff.reset() }
            let delay = s.backoff.next()
            logger.warning("exited; restarting", metadata: ["child": "\(name)", "wait.status": "\(status)",
                                                            "restart.in": "\(String(format: "%.2f", delay))s"])
            s.restartAt = now.addingTimeInterval(delay)
        }
    }

    /// Sends SIGTERM and waits up to `seconds`; then SIGKILL.
    func stop(within seconds: Double) async {
        state.withLock { $0.restartAt = nil }
        guard isRunning, let p = pid else { return }
        kill(p, SIGTERM)
        let deadline = Date().addingTimeInterval(seconds)
        while isRunning && Date() < deadline {
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        if isRunning {
            kill(p, SIGKILL)
            var status: Int32 = 0
            waitpid(p, &status, 0)
            state.withLock { $0.pid = nil }
        }
    }
}
