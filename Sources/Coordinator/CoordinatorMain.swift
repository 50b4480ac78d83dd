import ChatCore
import Logging
import NIOPosix
import ServiceLifecycle

/// `securechat-coordinator`: worker leases, routing, presence and global rate limits.
@main
enum CoordinatorMain {
    static let help = """
    usage: securechat-coordinator [flags]
    Worker leases and routing, presence across workers, global rate limits (each an atomic
    take-or-refuse). It listens on --coordinator.
      --lease-seconds S          a worker without a heartbeat this long is dropped (default 3)
      --settle-seconds S         after a (re)start, when presence counts as complete (default 1.5)
      --max-sockets-per-user N   WebSockets one user may have open at once (default 20; beyond, close 4009)
    """ + "\n" + ProcessSupport.commonHelp

    static func main() async {
        let options = Options()
        ProcessSupport.helpIfAsked(options, help)
        Telemetry.bootstrap()
        let logger = ProcessSupport.bootstrapLogging(options: options, label: "securechat.coordinator")
        let endpoint: Endpoint
        let limits: RateLimits
        let lease: Double, settle: Double, maxSockets: Int
        do {
            try options.refuseUnknown(["lease-seconds", "settle-seconds", "max-sockets-per-user"])
            let stateDir = options.string("state-dir", default: ".state")
            endpoint = try Endpoint(parsing: options.string("coordinator", default: stateDir + "/coordinator.sock"))
            limits = try RateLimits(options: options)
            lease = try options.double("lease-seconds", default: 3)
            settle = try options.double("settle-seconds", default: 1.5)
            maxSockets = try options.int("max-sockets-per-user", default: 20)
            guard maxSockets > 0 else { throw Options.Invalid("--max-sockets-per-user must be positive") }
        } catch {
            ProcessSupport.fail("\(error)")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let core = CoordinatorCore(limits: limits, leaseDuration: lease, settle: settle, secret: options.string("cluster-secret"), logger: logger,
                                   maxSocketsPerUser: maxSockets)
        var services: [any Service] = [CoordinatorService(endpoint: endpoint, core: core, group: group, logger: logger)]
        do {
            if let metrics = try MetricsService(options: options, group: group, logger: logger) { services.append(metrics) }
        } catch {
            ProcessSupport.fail("\(error)")
        }
        if let watch = ParentWatch(options: options, logger: logger) { services.append(watch) }
        let serviceGroup = ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        do {
            try await serviceGroup.run()
        } catch {
            logger.error("coordinator failed", metadata: ["error": "\(error)"])
            try? await group.shutdownGracefully()
            ProcessSupport.fail("\(error)")
        }
        try? await group.shutdownGracefully()
    }
}
