import ChatCore
import Testing

@Suite struct RedisErrorTests {
    @Test func failuresThatAFailoverMendsAreTransient() {
        for e in [RedisError.unavailable, .timeout, .notReplicated,
                  .server("READONLY You can't write against a read only replica."),
                  .server("LOADING Redis is loading the dataset in memory"),
                  .server("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.")] {
            #expect(e.isTransient, "\(e)")
        }
    }

    @Test func scriptErrorsAndRefusalsAreNot() {
        for e in [RedisError.unexpectedReply, .server("ERR Error running script"), .server("NOSCRIPT No matching script"),
                  .server("WRONGPASS invalid username-password pair"), .server("OOM command not allowed")] {
            #expect(!e.isTransient, "\(e)")
        }
    }
}
