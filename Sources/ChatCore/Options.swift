import Foundation
import NIOCore
import NIOPosix

/// One configuration story for every process: `--name value` (or `--name=value`)
/// on the command line, else the environment variable `SECURECHAT_NAME`
/// (upper case, `-` as `_`), else the default. The README's table lists them all.
public struct Options: Sendable {
    public private(set) var values: [String: String] = [:]
    public private(set) var positional: [String] = []
    private let environment: [String: String]

    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    public init(arguments: [String] = Array(CommandLine.arguments.dropFirst()),
                environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.environment = environment
        var i = 0
        while i < arguments.count {
            let arg = arguments[i]
            if arg.hasPrefix("--") {
                let body = String(arg.dropFirst(2))
                if let eq = body.firstIndex(of: "=") {
                    values[String(body[..<eq])] = String(body[body.index(after: eq)...])
                } else if i + 1 < arguments.count, !arguments[i + 1].hasPrefix("--") {
                    values[body] = arguments[i + 1]
                    i += 1
                } else {
                    values[body] = "true"
                }
            } else {
                positional.append(arg)
            }
            i += 1
        }
    }

    /// Flags every server process takes (the launcher passes them all to each child).
    public static let common: Set<String> = [
        "help", "log-level", "parent-pid", "metrics-listen", "state-dir", "redis-url", "redis-password", "redis-user", "redis-tls-ca", "redis-sentinels", "redis-master-name", "redis-sentinel-password", "redis-sentinel-user", "coordinator", "cluster-secret",
        "session-idle-seconds", "session-max-seconds",
        "msg-burst", "msg-per-second", "login-user-per-minute", "login-name-per-minute", "login-address-per-minute",
        "sync-burst", "sync-per-second", "request-burst", "requests-per-second",
    ]

    /// Refuses command-line flags outside `known` (and `common`), and positional arguments
    /// beyond `positionalLimit`, with a message that names them; a typo is not silently a default.
    public func refuseUnknown(_ known: Set<String>, positionalLimit: Int = 0) throws {
        let unknown = values.keys.filter { !known.contains($0) && !Self.common.contains($0) }.sorted()
        if let first = unknown.first {
            throw Invalid("unknown flag --\(first)\(unknown.count > 1 ? " (and \(unknown.dropFirst().map { "--" + $0 }.joined(separator: ", ")))" : ""); see --help")
        }
        if positional.count > positionalLimit {
            throw Invalid("unexpected argument '\(positional[positionalLimit])'; see --help")
        }
    }

    /// `--help` or `-h` on the command line (never from the environment).
    public var wantsHelp: Bool { values["help"] != nil || positional.contains("-h") }

    public static func environmentName(_ name: String) -> String {
        "SECURECHAT_" + name.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    /// The value given on the command line or in the environment, if any.
    public func string(_ name: String) -> String? {
        if let v = values[name] { return v }
        if let v = environment[Self.environmentName(name)], !v.isEmpty { return v }
        return nil
    }

    public func string(_ name: String, default value: String) -> String {
        string(name) ?? value
    }

    public func int(_ name: String, default value: Int) throws -> Int {
        guard let s = string(name) else { return value }
        guard let v = Int(s) else { throw Invalid("--\(name) must be an integer, got '\(s)'") }
        return v
    }

    public func double(_ name: String, default value: Double) throws -> Double {
        guard let s = string(name) else { return value }
        guard let v = Double(s), v.isFinite else { throw Invalid("--\(name) must be a number, got '\(s)'") }
        return v
    }

    /// `--event-loops`: the threads a process runs its event loops on (default: one per core).
    public func eventLoops() throws -> Int {
        let n = try int("event-loops", default: System.coreCount)
        guard (1...256).contains(n) else { throw Invalid("--event-loops must be 1...256") }
        return n
    }

    public func bool(_ name: String, default value: Bool) -> Bool {
        guard let s = string(name) else { return value }
        return ["1", "true", "yes", "on"].contains(s.lowercased())
    }
}

/// Where an internal service listens: a Unix domain socket or a TCP address.
public enum Endpoint: Sendable, Hashable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: Int)

    /// Parses `unix:/path`, `unix:///path`, `/path`, `redis://host:port`, `tcp://host:port` or `host:port`.
    public init(parsing text: String) throws {
        var s = text
        for scheme in ["redis://", "rediss://", "tcp://"] where s.hasPrefix(scheme) {
            s.removeFirst(scheme.count)
            if let slash = s.firstIndex(of: "/") { s = String(s[..<slash]) }
        }
        if s.hasPrefix("unix://") { s.removeFirst("unix://".count) } else if s.hasPrefix("unix:") { s.removeFirst("unix:".count) }
        if s.hasPrefix("/") || s.hasPrefix(".") {
            self = .unix(path: s)
            return
        }
        guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (0...65535).contains(port) else {
            throw Options.Invalid("'\(text)' is neither a socket path nor host:port")
        }
        var host = String(s[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self = .tcp(host: host.isEmpty ? "127.0.0.1" : host, port: port)
    }

    /// A comma-separated list of endpoints (`--coordinator a:7001,b:7001`), at least one.
    public static func list(parsing text: String) throws -> [Endpoint] {
        let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !parts.isEmpty else { throw Options.Invalid("'\(text)' names no endpoint") }
        return try parts.map { try Endpoint(parsing: $0) }
    }

    public var description: String {
        switch self {
        case let .unix(path): return "unix:" + path
        case let .tcp(host, port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }
}

extension ServerBootstrap {
    /// Binds to a Unix socket (mode 0600, replacing a stale file) or a TCP address.
    public func bind(to endpoint: Endpoint) async throws -> Channel {
        switch endpoint {
        case let .unix(path):
            let channel = try await bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
            chmod(path, 0o600)
            return channel
        case let .tcp(host, port):
            return try await bind(host: host, port: port).get()
        }
    }
}

extension ClientBootstrap {
    /// Connects to a Unix socket or a TCP address.
    public func connect(to endpoint: Endpoint) -> EventLoopFuture<Channel> {
        switch endpoint {
        case let .unix(path): return connect(unixDomainSocketPath: path)
        case let .tcp(host, port): return connect(host: host, port: port)
        }
    }
}

extension AdaptiveRecvByteBufferAllocator {
    /// Read buffers for long-lived chat streams: most reads are one small frame, and a
    /// channel keeps its last read buffer, so start small (NIO's default starts at 2 KiB)
    /// and let the adaptive allocator grow it for busy streams.
    public static let chatStream = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65536)
}
