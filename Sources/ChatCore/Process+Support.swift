import Foundation
import Logging
import ServiceLifecycle

/// Helpers every SecureChat process uses at start-up.
public enum ProcessSupport {
    /// Bootstraps swift-log once for an executable: one line per event on stderr, level from `--log-level`.
    public static func bootstrapLogging(options: Options, label: String) -> Logger {
        let level = Logger.Level(rawValue: options.string("log-level", default: "info")) ?? .info
        LoggingSystem.bootstrap { name in
            var handler = StreamLogHandler.standardError(label: name)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }

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
