import ChatCore
import Proto
import Foundation
import Logging
import UnixSignals

/// `securechat run`: a whole deployment on one machine.
struct RunCommand {
    let options: Options
    let logger: Logger

    /// Its own flags and those it passes on to its children.
    /// Flags passed on as they are: to the coordinator, to each worker, to each gateway.
    static let coordinatorFlags = ["lease-seconds", "max-sockets-per-user"]
    static let workerFlags = ["history", "history-max", "max-queued-frames", "admins", "max-rooms-per-user", "room-creations-per-hour", "max-private-members", "redis-hold-ms", "redis-wait-replicas", "redis-wait-ms"]
    static let gatewayFlags = ["request-timeout-seconds", "ping-seconds", "max-queued-frames", "max-queued-bytes", "flush-coalesce-ms",
                               "event-loops", "max-logins-in-flight", "allow-demo-users", "worker-header", "proxy-protocol", "max-file-bytes", "files-quota-bytes"]
    /// Its own flags and those it passes on to its children.
    static let flags = Set(["workers", "gateways", "port", "host", "users-file", "cert", "key", "web-dir", "public-origin",
                            "redis-server", "worker-event-loops", "coordinators", "leader-lease-ms"] + coordinatorFlags + workerFlags + gatewayFlags)

    /// A port of 127.0.0.1 free just now (the kernel's pick; the child binds it a moment later).
    static func freeLoopbackPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Options.Invalid("cannot open a socket for a metrics port") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard bound else { throw Options.Invalid("cannot find a free port for metrics") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    func execute() async throws {
        try options.refuseUnknown(Self.flags, positionalLimit: 1)
        let stateDir = absolute(options.string("state-dir", default: ".state"))
        let workers = try options.int("workers", default: 2)
        let port = try options.int("port", default: 5001)
        guard (1...64).contains(workers) else { throw Options.Invalid("--workers must be 1...64") }
        try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
        chmod(stateDir, 0o700)
        let usersFile = absolute(options.string("users-file", default: "users.json"))
        guard FileManager.default.fileExists(atPath: usersFile) else { throw Options.Invalid("users file \(usersFile) not found") }
        let allowDemo = options.bool("allow-demo-users", default: false)
        let demo = try UsersFile.checkDemoAccounts(in: try UsersFile(path: usersFile), path: usersFile, allowed: allowDemo)
        if !demo.isEmpty {
            logger.warning("DEMO: accounts with published passwords can log in; not for real use", metadata: ["users": "\(demo.joined(separator: ","))"])
        }
        let limits = try RateLimits(options: options)

        var cert = options.string("cert").map(absolute)
        var key = options.string("key").map(absolute)
        if cert == nil || key == nil {
            (cert, key) = try Certificates.selfSigned(in: stateDir + "/tls", logger: logger)
        }

        let bin = Self.binDirectory()
        var children: [Child] = []
        let redisURL: String
        if let url = options.string("redis-url") {
            redisURL = url
        } else {
            let redisDir = stateDir + "/redis"
            try FileManager.default.createDirectory(atPath: redisDir, withIntermediateDirectories: true)
            redisURL = stateDir + "/redis.sock"
            let redisServer = options.string("redis-server", default: "redis-server")
            guard let path = Self.which(redisServer) else {
                throw Options.Invalid("redis-server not found; install Debian's redis-server or pass --redis-url")
            }
            children.append(Child(name: "redis", executable: path, arguments: [
                "--port", "0", "--unixsocket", redisURL, "--unixsocketperm", "700", "--dir", redisDir,
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--loglevel", "warning", "--logfile", "",
            ]))
        }
        // Several coordinators: one active, the others standing by, elected through a lease in Redis.
        let coordinators = try options.int("coordinators", default: 1)
        guard (1...5).contains(coordinators) else { throw Options.Invalid("--coordinators must be 1...5") }
        let leaderLeaseMs = try options.int("leader-lease-ms", default: 2000)
        let coordinatorSockets = coordinators == 1 ? [options.string("coordinator", default: stateDir + "/coordinator.sock")]
            : (1...coordinators).map { "\(stateDir)/coordinator-\($0).sock" }
        let coordinator = coordinatorSockets.joined(separator: ",")
        var common = ["--state-dir", stateDir, "--redis-url", redisURL, "--coordinator", coordinator,
                      "--parent-pid", String(getpid()), "--log-level", options.string("log-level", default: "info")]
        // Secrets reach the children through their environment, never their argv (which `ps` shows).
        for name in ["cluster-secret", "redis-password"] {
            if let v = options.string(name) { setenv(Options.environmentName(name), v, 1) }
        }
        for name in ["session-idle-seconds", "session-max-seconds", "redis-user", "redis-tls-ca"] {
            if let v = options.string(name) { common += ["--\(name)", v] }
        }
        common += limits.arguments
        var coordinatorArgs = common
        for name in Self.coordinatorFlags {
            if let v = options.string(name) { coordinatorArgs += ["--\(name)", v] }
        }
        // Each child serves its metrics on its own port of 127.0.0.1 (never the public one).
        var metrics: [(child: String, url: String)] = []
        // The socket each coordinator child listens on, to wait for before the workers start.
        var coordinatorSocketOf: [String: String] = [:]
        var taken: Set<Int> = [port]
        func metricsArgs(_ child: String) throws -> [String] {
            // Never the public port, never one already handed to another child.
            var port = try Self.freeLoopbackPort()
            var tries = 0
            while taken.contains(port) && tries < 20 {
                port = try Self.freeLoopbackPort()
                tries += 1
            }
            taken.insert(port)
            metrics.append((child, "http://127.0.0.1:\(port)/metrics"))
            return ["--metrics-listen", "127.0.0.1:\(port)"]
        }
        if coordinators == 1 {
            // One coordinator may still stand for election (a standby started elsewhere).
            let lease = options.string("leader-lease-ms").map { ["--leader-lease-ms", $0] } ?? []
            children.append(Child(name: "coordinator", executable: bin + "/securechat-coordinator",
                                  arguments: coordinatorArgs + lease + (try metricsArgs("coordinator"))))
            coordinatorSocketOf["coordinator"] = coordinatorSockets[0]
        } else {
            for (i, socket) in coordinatorSockets.enumerated() {
                let name = "coordinator-\(i + 1)"
                let args = coordinatorArgs + ["--id", name, "--listen", socket, "--leader-lease-ms", String(leaderLeaseMs), "--settle-seconds", "1"]
                children.append(Child(name: name, executable: bin + "/securechat-coordinator", arguments: args + (try metricsArgs(name))))
                coordinatorSocketOf[name] = socket
            }
        }
        // Workers on one machine share its cores: one event loop each per core they can have,
        // not one per core each (threads that outnumber cores only wake one another).
        let workerLoops = try options.int("worker-event-loops", default: max(1, ProcessInfo.processInfo.activeProcessorCount / workers))
        guard (1...256).contains(workerLoops) else { throw Options.Invalid("--worker-event-loops must be 1...256") }
        for i in 1...workers {
            var args = common + ["--id", "worker-\(i)", "--listen", "\(stateDir)/worker-\(i).sock", "--event-loops", String(workerLoops)]
            for name in Self.workerFlags {
                if let v = options.string(name) { args += ["--\(name)", v] }
            }
            children.append(Child(name: "worker-\(i)", executable: bin + "/securechat-worker", arguments: args + (try metricsArgs("worker-\(i)"))))
        }
        var gatewayArgs = common + ["--port", String(port), "--host", options.string("host", default: "0.0.0.0"),
                                    "--cert", cert!, "--key", key!, "--users-file", usersFile,
                                    "--web-dir", absolute(options.string("web-dir", default: Self.defaultWebDir()))]
        if let origins = options.string("public-origin") { gatewayArgs += ["--public-origin", origins] }
        for name in Self.gatewayFlags {
            if let v = options.string(name) { gatewayArgs += ["--\(name)", v] }
        }
        let gateways = try options.int("gateways", default: 1)
        for i in 1...max(1, gateways) {
            let name = gateways > 1 ? "gateway-\(i)" : "gateway"
            children.append(Child(name: name, executable: bin + "/securechat-gateway", arguments: gatewayArgs + (try metricsArgs(name))))
        }
        // Where to scrape: in the log, and in <state-dir>/metrics.json for tools.
        for m in metrics { logger.info("metrics", metadata: ["child": "\(m.child)", "url": "\(m.url)"]) }
        let listing = "{" + metrics.map { "\(JSONText.string($0.child)): \(JSONText.string($0.url))" }.joined(separator: ", ") + "}\n"
        try Data(listing.utf8).write(to: URL(fileURLWithPath: stateDir + "/metrics.json"))

        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        for child in children {
            try child.start(logger: logger)
            if child.name == "redis" { try await waitForSocket(redisURL, seconds: 10) }
            if let socket = coordinatorSocketOf[child.name], !socket.contains(":") || socket.hasPrefix("/") {
                try await waitForSocket(socket, seconds: 10)
            }
        }
        print("SecureChat is running: open https://localhost:\(port) in a browser (admin / password123 with the shipped users.json).")
        print("Stop it with Ctrl-C.")

        fflush(nil)
        // The supervisor restarts children that exit until a signal asks everything to stop.
        let supervised = children
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    for child in supervised { child.superviseStep(logger: logger) }
                    try? await Task.sleep(nanoseconds: 100_000_000)
                }
            }
            var iterator = signals.makeAsyncIterator()
            let signal = await iterator.next()
            logger.info("shutting down", metadata: ["signal": "\(signal.map { "\($0)" } ?? "?")"])
            group.cancelAll()
        }
        // Gateways stop accepting while workers drain (1012 through the still-open streams);
        // then the control plane and Redis.
        await withTaskGroup(of: Void.self) { g in
            for c in children where c.name.hasPrefix("gateway") || c.name.hasPrefix("worker") {
                g.addTask { await c.stop(within: 20) }
            }
        }
        for c in children where c.name.hasPrefix("coordinator") { await c.stop(within: 5) }
        for c in children where c.name == "redis" { await c.stop(within: 10) }
        logger.info("stopped")
    }

    private func waitForSocket(_ path: String, seconds: Double) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if Self.canConnect(unixPath: path) { return }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        throw Options.Invalid("\(path) did not come up within \(Int(seconds)) s")
    }

    static func canConnect(unixPath: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(unixPath.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return rc == 0
    }

    func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }

    /// The folder holding this executable (the sibling executables live there).
    static func binDirectory() -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().path
    }

    /// `web/` of the source tree when run from it, else next to the binaries.
    static func defaultWebDir() -> String {
        if FileManager.default.fileExists(atPath: "web/login.html") { return "web" }
        return binDirectory() + "/web"
    }

    static func which(_ name: String) -> String? {
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let paths = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin:/usr/local/bin"
        for dir in paths.split(separator: ":") {
            let p = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return nil
    }
}

enum Certificates {
    /// A self-signed certificate for localhost and 127.0.0.1, made once with the openssl command.
    static func selfSigned(in dir: String, logger: Logger) throws -> (String, String) {
        let cert = dir + "/cert.pem", key = dir + "/key.pem"
        if FileManager.default.fileExists(atPath: cert) && FileManager.default.fileExists(atPath: key) { return (cert, key) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        chmod(dir, 0o700)
        guard let openssl = RunCommand.which("openssl") else { throw Options.Invalid("openssl not found; install Debian's openssl") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: openssl)
        p.arguments = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                       "-keyout", key, "-out", cert, "-days", "825", "-subj", "/CN=localhost",
                       "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw Options.Invalid("openssl could not make a certificate") }
        chmod(key, 0o600)
        logger.info("generated a self-signed certificate", metadata: ["cert": "\(cert)"])
        return (cert, key)
    }
}
