import ChatCore
import Foundation
import NIOCore
import NIOPosix
import Proto

/// One scenario's result: a row of the human table and one JSON line.
struct Report {
    var scenario: String
    var fields: [(String, Any)]

    func print() {
        Swift.print("\n== \(scenario)")
        for (k, v) in fields { Swift.print("  \(k.padding(toLength: 34, withPad: " ", startingAt: 0)) \(v)") }
        var object: [String: Any] = ["scenario": scenario]
        for (k, v) in fields { object[k] = v }
        if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) {
            Swift.print(String(decoding: data, as: UTF8.self))
        }
        fflush(nil)
    }
}

func round3(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }

/// Resident memory (KiB) of the deployment's server processes, from /proc.
enum ProcessMemory {
    static func serverPIDs(stateDir: String) -> [(pid: Int32, name: String)] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        var out: [(Int32, String)] = []
        for e in entries {
            guard let pid = Int32(e), let data = FileManager.default.contents(atPath: "/proc/\(e)/cmdline") else { continue }
            let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard let exe = args.first else { continue }
            let name = (exe as NSString).lastPathComponent
            guard ["securechat-gateway", "securechat-worker", "securechat-coordinator"].contains(name),
                  args.contains(stateDir) else { continue }
            out.append((pid, name))
        }
        return out
    }

    static func rssKiB(_ pid: Int32) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
        }
        return 0
    }

    static func total(stateDir: String) -> (KiB: Int, byRole: [String: Int]) {
        var byRole: [String: Int] = [:]
        for (pid, name) in serverPIDs(stateDir: stateDir) {
            byRole[name, default: 0] += rssKiB(pid)
        }
        return (byRole.values.reduce(0, +), byRole)
    }
}

struct Scenarios {
    let connector: Connector
    let stats: Stats
    let group: EventLoopGroup
    let options: Options
    let cookies: [String]

    /// Opens `count` connections, spread over the sessions, `parallel` at a time.
    func open(_ count: Int, parallel: Int = 64) async throws -> [Connector.Connection] {
        try await openIndexed(count, parallel: parallel).map(\.1)
    }

    /// `open`, each connection with the index of the session it used (sessions file order).
    func openIndexed(_ count: Int, parallel: Int = 64) async throws -> [(Int, Connector.Connection)] {
        var result: [(Int, Connector.Connection)] = []
        result.reserveCapacity(count)
        var next = 0
        try await withThrowingTaskGroup(of: (Int, Connector.Connection).self) { g in
            func add() {
                let index = next % cookies.count
                let cookie = cookies[index]
                next += 1
                g.addTask { (index, try await connector.connect(cookie: cookie)) }
            }
            for _ in 0..<min(parallel, count) { add() }
            while let c = try await g.next() {
                result.append(c)
                if next < count { add() }
            }
        }
        return result
    }

    /// many rooms: `--rooms` rooms of `--room-size` members (session i is in room i / size,
    /// named `--room-prefix` + index; the rooms are made beforehand), one sender per room at
    /// `--rate` messages/s, every room active at once.
    func rooms() async throws -> Report {
        let count = try options.int("rooms", default: 200)
        let size = try options.int("room-size", default: 10)
        let rate = try options.double("rate", default: 2)
        let seconds = try options.double("seconds", default: 10)
        let prefix = options.string("room-prefix", default: "br-")
        let encrypted = options.bool("e2ee", default: false)
        let conns = try await openIndexed(count * size, parallel: 128)
        let senders = conns.filter { $0.0 % size == 0 }.map { (i, c) -> Connector.Connection in
            var s = c
            s.room = prefix + String(i / size)
            s.encrypted = encrypted
            return s
        }
        var fields: [(String, Any)] = [("rooms", count), ("room_size", size), ("clients", conns.count), ("rate_per_sender", rate),
                                       ("encrypted", encrypted)]
        fields += try await drive(senders: senders, receivers: size, rate: rate, seconds: seconds, padding: 60)
        await close(conns.map(\.1))
        return Report(scenario: options.string("name", default: "rooms"), fields: fields)
    }

    /// CPU seconds (user + system) the processes of `--server-pids` have used so far.
    func serverCPU() -> Double? {
        guard let list = options.string("server-pids") else { return nil }
        let tick = Double(sysconf(Int32(_SC_CLK_TCK)))
        var total = 0.0
        for pid in list.split(separator: ",") {
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = text.lastIndex(of: ")") else { continue }
            let fields = text[text.index(after: close)...].split(separator: " ")
            if fields.count > 12, let u = Double(fields[11]), let k = Double(fields[12]) { total += (u + k) / tick }
        }
        return total
    }

    /// Runs senders at `rate` messages/s each for `seconds`; returns deliveries/s, ratio and percentiles,
    /// and with `--server-pids` the CPU those processes spent in the window (sending and the second after).
    func drive(senders: [Connector.Connection], receivers: Int, rate: Double, seconds: Double, padding: Int) async throws -> [(String, Any)] {
        stats.reset()
        let cpuBefore = serverCPU()
        let interval = TimeAmount.nanoseconds(Int64(1e9 / rate))
        var tasks: [RepeatedTask] = []
        for (i, s) in senders.enumerated() {
            let offset = TimeAmount.nanoseconds(Int64(1e9 / rate * Double(i) / Double(max(1, senders.count))))
            tasks.append(s.channel.eventLoop.scheduleRepeatedTask(initialDelay: offset, delay: interval) { _ in s.send(padding: padding) })
        }
        try await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
        for t in tasks { t.cancel() }
        // Let in-flight messages land before counting; the rate is over the sending window.
        try await Task.sleep(nanoseconds: 1_000_000_000)
        let elapsed = seconds
        let s = stats.state.withLockedValue { $0 }
        let expected = s.sent * receivers
        let ratio = expected == 0 ? 0 : Double(s.delivered) / Double(expected)
        var cpu: [(String, Any)] = []
        if let before = cpuBefore, let after = serverCPU() {
            cpu = [("server_cpu_s_window", round3(after - before)),
                   ("server_cpu_us_per_delivery_window", round3(1e6 * (after - before) / Double(max(1, s.delivered))))]
        }
        return cpu + [
            ("sent", s.sent), ("acked", s.acked), ("errors", s.errors), ("delivered", s.delivered),
            ("expected_deliveries", expected), ("delivery_ratio", round3(ratio * 100) / 100),
            ("delivered_per_s", Int(Double(s.delivered) / elapsed)),
            ("p50_ms", round3(s.latency.percentile(50))), ("p99_ms", round3(s.latency.percentile(99))),
            ("p999_ms", round3(s.latency.percentile(99.9))), ("max_ms", round3(s.latency.percentile(100))),
        ]
    }

    func close(_ conns: [Connector.Connection]) async {
        for c in conns { c.channel.close(promise: nil) }
        for c in conns { try? await c.channel.closeFuture.get() }
    }

    /// fixed load: `--clients`, `--senders`, `--rate`, `--seconds`.
    func load(name: String) async throws -> Report {
        let clients = try options.int("clients", default: 100)
        let senders = try options.int("senders", default: 10)
        let rate = try options.double("rate", default: 2)
        let seconds = try options.double("seconds", default: 10)
        let padding = try options.int("padding", default: 60)
        let conns = try await open(clients)
        let memory = options.string("state-dir").map { ProcessMemory.total(stateDir: $0).KiB }
        var fields: [(String, Any)] = [("clients", clients), ("senders", senders), ("rate_per_sender", rate), ("seconds", seconds)]
        fields += try await drive(senders: Array(conns.prefix(senders)), receivers: clients, rate: rate, seconds: seconds, padding: padding)
        if let memory { fields.append(("server_rss_kib", memory)) }
        await close(conns)
        return Report(scenario: name, fields: fields)
    }

    /// overload: one step offered well past saturation; then wait (up to `--drain-seconds`)
    /// until every acknowledged message reached every receiver. Reports how many clients
    /// were disconnected (none should be: overload slows senders, it does not cut readers),
    /// how many sends were refused, and how long the backlog took to drain.
    func overload() async throws -> Report {
        let clients = try options.int("clients", default: 100)
        let senders = try options.int("senders", default: 10)
        let seconds = try options.double("seconds", default: 5)
        let rate = try options.double("rate", default: 300)
        let drainSeconds = try options.double("drain-seconds", default: 60)
        let conns = try await open(clients)
        let r = Dictionary(uniqueKeysWithValues: try await drive(senders: Array(conns.prefix(senders)), receivers: clients,
                                                                 rate: rate, seconds: seconds, padding: 60))
        let start = DispatchTime.now().uptimeNanoseconds
        var s = stats.state.withLockedValue { $0 }
        let deadline = start + UInt64(drainSeconds * 1e9)
        while s.delivered < s.acked * clients && DispatchTime.now().uptimeNanoseconds < deadline {
            try await Task.sleep(nanoseconds: 50_000_000)
            s = stats.state.withLockedValue { $0 }
        }
        let drained = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        await close(conns)
        return Report(scenario: options.string("name", default: "overload"), fields: [
            ("clients", clients), ("senders", senders), ("rate_per_sender", rate),
            ("offered_deliveries_per_s", Int(rate * Double(senders * clients))),
            ("sent", s.sent), ("acked", s.acked), ("refused", s.errors), ("closed", s.closed),
            ("delivered", s.delivered), ("expected_from_acked", s.acked * clients),
            ("all_acked_delivered", s.delivered >= s.acked * clients),
            ("delivered_per_s_in_window", r["delivered_per_s"] ?? 0), ("p99_ms_in_window", r["p99_ms"] ?? 0),
            ("drain_seconds_after_window", round3(drained)),
        ])
    }

    /// fan-out: raise the rate until p99 > 50 ms or delivery < 99.9 %; the best rate that met both.
    func fanout() async throws -> Report {
        let clients = try options.int("clients", default: 100)
        let senders = try options.int("senders", default: 10)
        let seconds = try options.double("seconds", default: 5)
        let rates = (options.string("rates") ?? "1,2,5,10,15,20,25,30,40,50").split(separator: ",").compactMap { Double($0) }
        let conns = try await open(clients)
        var best: [(String, Any)]?
        var steps: [[String: Any]] = []
        for rate in rates {
            let r = try await drive(senders: Array(conns.prefix(senders)), receivers: clients, rate: rate, seconds: seconds, padding: 60)
            let d = Dictionary(uniqueKeysWithValues: r)
            let p99 = d["p99_ms"] as! Double, ratio = d["delivery_ratio"] as! Double
            steps.append(["rate_per_sender": rate, "delivered_per_s": d["delivered_per_s"]!, "p99_ms": p99, "delivery_ratio": ratio])
            Swift.print("  fan-out step: \(rate)/s per sender -> \(d["delivered_per_s"]!) deliveries/s, p99 \(p99) ms, delivered \(ratio * 100)%")
            fflush(nil)
            if p99 > 50 || ratio < 0.999 { break }
            best = [("rate_per_sender", rate)] + r
        }
        await close(conns)
        var fields: [(String, Any)] = [("clients", clients), ("senders", senders)]
        fields += best ?? [("rate_per_sender", 0)]
        fields.append(("steps", steps))
        return Report(scenario: options.string("name", default: "fanout"), fields: fields)
    }

    /// idle: hold connections, memory per connection, heartbeat (ping) round trips.
    func idle() async throws -> Report {
        let count = try options.int("connections", default: 1000)
        let stateDir = options.string("state-dir") ?? ""
        let before = ProcessMemory.total(stateDir: stateDir)
        let t0 = DispatchTime.now().uptimeNanoseconds
        let conns = try await open(count, parallel: try options.int("parallel", default: 128))
        let openSeconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        try await Task.sleep(nanoseconds: 2_000_000_000)
        let after = ProcessMemory.total(stateDir: stateDir)
        stats.reset()
        // Heartbeats: every connection pings once over ~5 s, spread evenly.
        let spread = try options.double("heartbeat-seconds", default: 5)
        for (i, c) in conns.enumerated() {
            let delay = TimeAmount.nanoseconds(Int64(spread * 1e9 * Double(i) / Double(conns.count)))
            c.channel.eventLoop.scheduleTask(in: delay) { c.ping() }
        }
        try await Task.sleep(nanoseconds: UInt64((spread + 2) * 1e9))
        let s = stats.state.withLockedValue { $0 }
        await close(conns)
        let perConn = Double((after.KiB - before.KiB)) / Double(count)
        var deltaByRole: [String: Double] = [:]
        for (role, kib) in after.byRole { deltaByRole[role] = round3(Double(kib - (before.byRole[role] ?? 0)) / Double(count)) }
        return Report(scenario: "idle", fields: [
            ("connections", count), ("open_seconds", round3(openSeconds)),
            ("rss_before_kib", before.KiB), ("rss_after_kib", after.KiB), ("rss_by_role_kib", after.byRole),
            ("kib_per_connection", round3(perConn)), ("kib_per_connection_by_role", deltaByRole), ("heartbeats", Int(s.pongs.count)),
            ("heartbeat_p50_ms", round3(s.pongs.percentile(50))), ("heartbeat_p99_ms", round3(s.pongs.percentile(99))),
        ])
    }

    /// connect storm: TLS handshake + login + upgrade, raising concurrency until errors appear.
    func storm(target: Target, users: [String], password: String) async throws -> Report {
        let levels = (options.string("levels") ?? "8,16,32,64").split(separator: ",").compactMap { Int($0) }
        let perLevel = try options.int("per-level", default: 200)
        var steps: [[String: Any]] = []
        var best = 0.0
        for level in levels {
            var ok = 0, failed = 0, next = 0
            let t0 = DispatchTime.now().uptimeNanoseconds
            var opened: [Connector.Connection] = []
            await withTaskGroup(of: Connector.Connection?.self) { g in
                func add() {
                    let user = users[next % users.count]
                    next += 1
                    g.addTask {
                        do {
                            let cookie = try await HTTPS.login(target, group: group, user: user, password: password)
                            return try await connector.connect(cookie: cookie)
                        } catch { return nil }
                    }
                }
                for _ in 0..<min(level, perLevel) { add() }
                while let r = await g.next() {
                    if let r { ok += 1; opened.append(r) } else { failed += 1 }
                    if next < perLevel { add() }
                }
            }
            let secs = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            let rate = Double(ok) / secs
            steps.append(["concurrency": level, "ok": ok, "failed": failed, "per_second": round3(rate)])
            Swift.print("  storm step: concurrency \(level) -> \(Int(rate)) logins+upgrades/s, \(failed) failed")
            fflush(nil)
            await close(opened)
            if failed > 0 { break }
            best = max(best, rate)
        }
        return Report(scenario: "storm", fields: [("best_per_second", round3(best)), ("steps", steps)])
    }
}

/// coordinator: rate-limit checks per second and their latency, from several links at once.
func coordinatorScenario(options: Options, group: EventLoopGroup) async throws -> Report {
    let endpoint = try Endpoint(parsing: options.string("coordinator") ?? "")
    let links = try options.int("links", default: 4)
    let rate = try options.double("checks-per-second", default: 20000)
    let seconds = try options.double("seconds", default: 5)
    var logger = Logger(label: "bench")
    logger.logLevel = .error
    let clients = (0..<links).map { _ in
        CoordinatorLink(endpoints: [endpoint], secret: options.string("cluster-secret"), group: group, logger: logger)
    }
    // The links run in child tasks of this scenario and end with it.
    return try await withThrowingTaskGroup(of: Void.self) { runs in
        for l in clients { runs.addTask { try await l.run() } }
        let deadline = DispatchTime.now().uptimeNanoseconds + 5_000_000_000
        while !clients.allSatisfy(\.isConnected) && DispatchTime.now().uptimeNanoseconds < deadline {
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        let hist = NIOLockedValueBoxHistogram()
        let perLink = rate / Double(links)
        let t0 = DispatchTime.now().uptimeNanoseconds
        // Open loop at a fixed rate per link, driven from the link's own event loop (no task hops on
        // the caller's side), each call timed from send to answer.
        let done = clients.map { link -> EventLoopFuture<Void> in
            guard let loop = link.eventLoop else { return group.any().makeFailedFuture(BenchError("coordinator link down")) }
            let total = Int(perLink * seconds)
            let finished = loop.makePromise(of: Void.self)
            let state = NIOLoopBoundBox.makeBoxSendingValue((sent: 0, answered: 0, samples: [UInt64]()), eventLoop: loop)
            // Every millisecond, send what is due by now: the offered rate holds whatever the timer does.
            loop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(1)) { task in
                let due = min(total, Int(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 * perLink) + 1)
                if state.value.sent >= total { task.cancel(); return }
                while state.value.sent < due {
                    let n = state.value.sent
                    state.value.sent += 1
                    let start = DispatchTime.now().uptimeNanoseconds
                    link.callFuture(.rateCheck(kind: .message, key: "bench-\(n % 1000)", consume: true)).whenComplete { _ in
                        state.value.samples.append((DispatchTime.now().uptimeNanoseconds - start) / 1000)
                        state.value.answered += 1
                        if state.value.answered == total {
                            for v in state.value.samples { hist.record(v) }
                            finished.succeed(())
                        }
                    }
                }
            }
            return finished.futureResult
        }
        for f in done { try await f.get() }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        runs.cancelAll()
        let h = hist.snapshot()
        return Report(scenario: "coordinator", fields: [
            ("links", links), ("target_checks_per_s", rate), ("checks", Int(h.count)),
            ("checks_per_s", Int(Double(h.count) / elapsed)),
            ("p50_ms", round3(h.percentile(50))), ("p99_ms", round3(h.percentile(99))), ("p999_ms", round3(h.percentile(99.9))),
        ])
    }
}

import Logging
import NIOConcurrencyHelpers

final class NIOLockedValueBoxHistogram: Sendable {
    private let box = NIOLockedValueBox(LatencyHistogram())
    func record(_ micros: UInt64) { box.withLockedValue { $0.record(micros) } }
    func snapshot() -> LatencyHistogram { box.withLockedValue { $0 } }
}
