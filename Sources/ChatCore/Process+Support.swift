import Foundation
import Logging
import ServiceLifecycle

/// Helpers every SecureChat process uses at start-up.
public enum ProcessSupport {
    /// Bootstraps swift-log once for an executable: one line per event on stderr, the time in UTC
    /// to the millisecond (`LineLogHandler`), level from `--log-level`.
    public static func bootstrapLogging(options: Options, label: String) -> Logger {
        let level = Logger.Level(rawValue: options.string("log-level", default: "info")) ?? .info
        LoggingSystem.bootstrap { name in
            var handler = LineLogHandler(label: name)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }

    /// Prints `text` and exits 0 when the command line asks for `--help` (before anything starts).
    public static func helpIfAsked(_ options: Options, _ text: String) {
        guard options.wantsHelp else { return }
        print(text)
        exit(0)
    }

    /// Flags every server process takes (printed under each one's own in `--help`).
    public static let commonHelp = """
    Common flags (each also read from SECURECHAT_<NAME>, e.g. --redis-url as SECURECHAT_REDIS_URL):
      --state-dir DIR            sockets, Redis data, certificate (default .state)
      --redis-url URL            redis://host:port, unix:///path or /path (default <state-dir>/redis.sock)
      --redis-user NAME, --redis-password PW   AUTH for an external Redis: an ACL user (Redis 6+) and
                                 its password (prefer the environment for the password)
      --redis-tls-ca PEM         TLS to Redis, its certificate checked against this CA (rediss:// URLs
                                 use TLS too, with the system's roots unless this is given)
      --redis-sentinels LIST     host:port of Redis Sentinels, comma-separated: each connection asks them
                                 all at once and goes to the primary a majority of them name (its ROLE
                                 checked), and follows +switch-master and READONLY to the next one;
                                 --redis-url is then unused
      --redis-master-name NAME   the primary's name at the Sentinels (default sc)
      --redis-sentinel-password PW, --redis-sentinel-user NAME   AUTH for the Sentinels themselves
                                 (their requirepass or an ACL user; prefer the environment)
      --coordinator ADDR[,ADDR]  coordinator socket path or host:port (default <state-dir>/coordinator.sock);
                                 several: the active one and its standbys, whichever holds the lease
      --cluster-secret S         secret every internal link proves (prefer the environment)
      --msg-burst N, --msg-per-second R        per-user message limit (default 5, 1)
      --login-user-per-minute N, --login-address-per-minute N   failed-login limits (default 5, 20)
      --login-name-per-minute N  failed logins per name from all addresses (default 30)
      --sync-burst N, --sync-per-second R      per-user sync limit (default 30, 1)
      --request-burst N, --requests-per-second R  per-user room requests (default 60, 10)
      --log-level L              trace, debug, info, notice, warning, error, critical (default info)
      --parent-pid PID           exit when this process is gone (set by the launcher)
      --metrics-listen HOST:PORT serve Prometheus metrics at http://HOST:PORT/metrics (default: none;
                                 the launcher gives each child one on 127.0.0.1)
      --help, -h                 this text
    Every flag: README.md, section Configuration.
    """

    /// Exits with a one-line message (for configuration errors before any service starts).
    public static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        exit(2)
    }
}

/// Ends the process group's services when the launching parent goes away
/// (Linux offers no pre-spawn PR_SET_PDEATHSIG through Foundation's Process).
public struct ParentWatch: Service {
    let parent: pid_t
    let logger: Logger

    public init?(options: Options, logger: Logger) {
        guard let s = options.string("parent-pid"), let pid = pid_t(s), pid > 1 else { return nil }
        self.parent = pid
        self.logger = logger
    }

    public func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            if getppid() != parent {
                logger.warning("launcher went away; shutting down")
                kill(getpid(), SIGTERM)
                return
            }
            await sleepUnlessShuttingDown(seconds: 0.25)
        }
    }
}
