import ChatCore
import Foundation
import Logging

/// One supervised child process: restarted with backoff when it exits on its own.
final class Child {
    let name: String
    let executable: String
    let arguments: [String]
    private(set) var process: Process?
    private var backoff = Backoff(base: 0.25, cap: 10)
    private var startedAt = Date.distantPast
    private var restartAt: Date?
    private(set) var restarts = 0

    init(name: String, executable: String, arguments: [String]) {
        self.name = name
        self.executable = executable
        self.arguments = arguments
    }

    var pid: pid_t? { process.flatMap { $0.isRunning ? $0.processIdentifier : nil } }

    func start(logger: Logger) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        try p.run()
        process = p
        startedAt = Date()
        restartAt = nil
        logger.info("started", metadata: ["child": "\(name)", "pid": "\(p.processIdentifier)"])
    }

    /// Restarts a child that exited; backoff grows while it keeps crashing soon after start.
    func superviseStep(logger: Logger) {
        guard let p = process, !p.isRunning else { return }
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
        if now.timeIntervalSince(startedAt) > 30 { backoff.reset() }
        let delay = backoff.next()
        logger.warning("exited; restarting", metadata: ["child": "\(name)", "status": "\(p.terminationStatus)",
                                                        "restart.in": "\(String(format: "%.2f", delay))s"])
        restartAt = now.addingTimeInterval(delay)
    }

    func signal(_ sig: Int32) {
        if let pid { kill(pid, sig) }
    }

    /// Sends SIGTERM and waits up to `seconds`; then SIGKILL.
    func stop(within seconds: Double) async {
        guard let p = process, p.isRunning else { return }
        kill(p.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(seconds)
        while p.isRunning && Date() < deadline {
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        if p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
    }
}
