import ChatCore
import Foundation

/// `securechat`: runs a deployment, or edits the users file.
@main
enum Launcher {
    static let usage = """
    usage: securechat run [--workers N] [--gateways N] [--port P] [--state-dir DIR] [--redis-url URL]
                          [--users-file F] [--cert PEM --key PEM] [--worker-event-loops N] [--allow-demo-users]
                          [--coordinators N [--leader-lease-ms MS]] [child flags]
           securechat users add|passwd|remove NAME [--users-file F]
           securechat users list [--users-file F]
           securechat users add-many PREFIX COUNT [--log-n N] [--users-file F]   (benchmarks; password on stdin)

    run: the whole service on one machine (Redis unless --redis-url, the coordinator, --workers
    workers, --gateways gateways on --port), supervised; flags it knows are passed to its children
    (see securechat-gateway --help, securechat-worker --help, securechat-coordinator --help).
    --coordinators N (1...5, default 1) runs N coordinators, one active and the others standing by,
    elected through a lease of --leader-lease-ms (default 2000) in Redis.
    users: edits the users file (scrypt hashes); a running gateway reloads it.
    """

    static func main() async {
        let options = Options()
        if options.wantsHelp {
            print(usage)
            exit(0)
        }
        switch options.positional.first {
        case "run":
            let logger = ProcessSupport.bootstrapLogging(options: options, label: "securechat.launcher")
            do { try await RunCommand(options: options, logger: logger).execute() } catch { ProcessSupport.fail("\(error)") }
        case "users":
            do { try UsersCommand(options: options).execute() } catch { ProcessSupport.fail("\(error)") }
        default:
            print(usage)
            exit(options.positional.isEmpty ? 0 : 2)
        }
    }
}
