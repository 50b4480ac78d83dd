import ChatCore
import Foundation
import Logging

/// One supervised child process: restarted with backoff when it exits on its own.
///
/// Spawned with posix_spawn and an empty signal mask and default signal
/// dispositions: threads of the launcher block signals, and a child must not
/// inherit that (redis-server would never see its SIGTERM).
final class Child {
    let name: String
    let executable: String
    let arguments: [String]
    private(set) var pid: pid_t?
    private var backoff = Backoff(base: 0.25, cap: 10)
    private var startedAt = Date.distantPast
    private var restartAt: Date?
    private(set) var restarts = 0

    init(name: String, executable: String, arguments: [String]) {
        self.name = name
        self.executable = executable
        self.arguments = arguments
    }

    func start(logger: Logger) throws {
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
        pid = child
        startedAt = Date()
        restartAt = nil
        logger.info("started", metadata: ["child": "\(name)", "pid": "\(child)"])
    }

    /// Reaps the child if it exited; returns its wait status then.
    private func reap() -> Int32? {
        guard let p = pid else { return nil }
        var status: Int32 = 0
        let r = waitpid(p, &status, WNOHANG)
        if r == p || (r < 0 && errno == ECHILD) {
            pid = nil
            return status
        }
        return nil
    }

    var isRunning: Bool {
        _ = reap()
        return pid != nil
    }

    /// Restarts a child that exited; the backoff grows while it keeps crashing soon after start.
    func superviseStep(logger: Logger) {
        let now = Date()
        if let at = restartAt {
            guard now >= at else { return }
            restarts += 1
            do { try start(logger: logger) } catch {
                logger.error("cannot restart", metadata: ["child": "\(name)", "error": "\(error)"])
                restartAt = now.addingTimeInterval(backoff.next())
            }
            return
        }
        guard let status = reap() else { return }
        if now.timeIntervalSince(startedAt) > 30 { backoff.reset() }
        let delay = backoff.next()
        logger.warning("exited; restarting", metadata: ["child": "\(name)", "wait.status": "\(status)",
                                                        "restart.in": "\(String(format: "%.2f", delay))s"])
        restartAt = now.addingTimeInterval(delay)
    }

    /// Sends SIGTERM and waits up to `seconds`; then SIGKILL.
    func stop(within seconds: Double) async {
        restartAt = nil
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
            pid = nil
        }
    }
}
