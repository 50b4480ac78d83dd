import ChatCore
import Foundation
import NIOCore
import NIOPosix

/// `securechat-bench SCENARIO --url https://127.0.0.1:PORT ...`: the load generator.
/// Scenarios: load, fanout, overload, idle, storm, coordinator. It stops by itself and only
/// ever targets loopback. See docs/benchmarks.md.
@main
enum BenchMain {
    static let usage = """
    usage: securechat-bench load|fanout|overload|rooms|idle|storm|coordinator --url https://127.0.0.1:PORT --ca CERT --sessions FILE [...]
    The project's own load generator (real TLS WebSocket clients); Benchmarks/bench.py drives it
    and explains each scenario. Common: --threads N (default: one per core), --name LABEL,
    --server-pids P1,P2,... (report the CPU those processes spend in each sending window).
      load, fanout, overload   --clients N --senders N --rate R | --rates R1,R2,... --seconds S --padding BYTES
      rooms                    --rooms N --room-size K --rate R --seconds S --room-prefix P (session i is in room i/K)
                               --e2ee (the rooms are encrypted: messages carry an opaque e2ee object)
      idle                     --connections N --heartbeat-seconds S
      storm                    --users FILE --levels C1,C2,... --per-level N --password PW
      coordinator              --coordinator ADDR --links N --checks-per-second R --seconds S
    """

    static func main() async {
        // Output is flushed after each line it matters for (fflush(nil): stdout itself is shared mutable state to Swift 6).
        let options = Options()
        guard let scenario = options.positional.first, !options.wantsHelp else {
            print(usage)
            exit(options.wantsHelp ? 0 : 2)
        }
        do {
            try options.refuseUnknown(["ca", "name", "password", "path", "sessions", "threads", "url", "user-prefix", "users",
                                       "checks-per-second", "clients", "connections", "drain-seconds", "heartbeat-seconds",
                                       "levels", "links", "padding", "parallel", "per-level", "rate", "rates", "seconds", "senders", "rooms", "room-size", "room-prefix", "server-pids", "e2ee"],
                                      positionalLimit: 1)
        } catch {
            print("error: \(error)")
            exit(2)
        }
        guard let threads = try? options.int("threads", default: System.coreCount), threads > 0 else {
            print("--threads must be a positive integer")
            exit(2)
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        do {
            let report: Report
            if scenario == "coordinator" {
                report = try await coordinatorScenario(options: options, group: group)
            } else {
                let target = try Target(url: options.string("url", default: "https://127.0.0.1:5001"), caFile: options.string("ca"))
                let stats = Stats()
                let connector = Connector(target: target, group: group, stats: stats, path: options.string("path", default: "/ws"))
                let cookies = try options.string("sessions").map {
                    try String(contentsOfFile: $0, encoding: .utf8).split(separator: "\n").map(String.init)
                } ?? []
                let s = Scenarios(connector: connector, stats: stats, group: group, options: options, cookies: cookies)
                switch scenario {
                case "load": report = try await s.load(name: options.string("name", default: "load"))
                case "fanout": report = try await s.fanout()
                case "rooms": report = try await s.rooms()
                case "overload": report = try await s.overload()
                case "idle": report = try await s.idle()
                case "storm":
                    let users = (0..<(try options.int("users", default: 100))).map { "\(options.string("user-prefix", default: "bench"))\($0)" }
                    report = try await s.storm(target: target, users: users, password: options.string("password", default: "bench-password"))
                default: throw BenchError("unknown scenario \(scenario)")
                }
            }
            report.print()
        } catch {
            FileHandle.standardError.write(Data("bench: \(error)\n".utf8))
            try? await group.shutdownGracefully()
            exit(1)
        }
        try? await group.shutdownGracefully()
    }
}
