// Package assignments is the client side of the guild → pod map: the JSON
// shapes of the config node API (api.go), the wire format of its change
// stream (wire.go, written by confignode and read here), an HTTP client that
// fails over across config nodes (client.go), a typed reader of one watch
// stream (stream.go), and the Watcher, the list+watch client that keeps the
// whole map in memory so that Lookup never does I/O (watcher.go).
//
// # Invariants
//
// Each has a test named after it (in this package unless noted).
//
//   - The Watcher's map is always the replicated state at some revision: the
//     one of its last list, plus whole revisions applied in order after it
//     (TestMapIsAlwaysAStateAtSomeRevision).
//   - No half-applied revision. A revision's events may arrive over several
//     frames; the Stream returns a revision only once its last fragment has
//     arrived, and the Watcher applies it under one lock, so a reader sees
//     all of a revision or none of it, and a stream that breaks between
//     fragments leaves nothing of that revision behind
//     (TestNoHalfAppliedRevisionWhenAStreamBreaksBetweenFragments,
//     TestFragmentsReassembleIntoTheRevisionTheServerEncoded).
//   - Revisions only grow. A change whose revision is not above the map's is
//     ignored (and counted); a list below the map's revision is refused and
//     another node asked (TestRevisionNeverGoesBackwardsDuplicatesAreIgnored,
//     TestLaggingNodeNeverMakesTheRevisionGoBackwards).
//   - Every frame is bounded: no line of a watch stream is longer than
//     MaxFrameBytes, whatever the command, and the reader reads lines of that
//     length (TestEveryFrameFitsTheReaderWhateverTheRevisionSize;
//     confignode's TestEveryWatcherReceivesTheLargestAcceptedCommand).
//   - No gaps: after a disconnect the Watcher resumes from its revision on
//     the same or another node; when a node cannot serve it (410 Gone, or
//     `event: gone`) it relists and tells subscribers (Relisted) (confignode's
//     TestWatcherFailsOverWithoutMissingAnEvent,
//     TestWatcherRelistsAfterGoneAndConverges).
//   - The map is never cleared. With every config node down the Watcher keeps
//     answering from its last map and retries with backoff and jitter
//     (TestEveryNodeDownKeepsTheLastMapAndRetries).
//   - Staleness means the time since the Watcher last had proof that its map
//     was the cluster's current one: a progress message from a node that
//     knows a leader, heard from it recently, is at no older term and no
//     lower revision than anything the Watcher learned from other nodes, and
//     whose revision the Watcher had reached. Messages from a node that
//     cannot give that proof (a follower cut off from the majority keeps a
//     stream open and sends progress with no leader) do not count: the
//     Watcher fails over after StaleAfter without proof (or without a byte
//     from the node), and Staleness keeps growing; a node busy sending a
//     large revision is not cut off for it
//     (TestStalenessIsTheTimeSinceTheLastProofOfCurrency,
//     TestWatcherLeavesANodeThatKnowsNoLeader,
//     TestWatcherLeavesANodeThatLagsWhatOthersShowed,
//     TestWatcherLeavesANodeThatSendsNothing,
//     TestWatcherKeepsAStreamThatIsSlowlySendingALargeRevision; confignode's
//     TestWatcherOnAFollowerCutOffFromTheMajorityReportsItsRealStaleness).
//   - Subscribers see, per subscription, changes in strictly increasing
//     revision order, each at most once; whenever they might have missed one
//     (a relist, or their buffer was full) they get a Change with
//     Relisted=true at the current revision. A slow subscriber never blocks
//     the Watcher (TestSubscribersSeeEveryChangeInOrderOnce,
//     TestSlowSubscriberNeverBlocksAndGetsOneRelistedChange). Subscribers
//     are told first: whoever sees revision r (Revision, WaitRevision,
//     WaitFor) finds r's change already in every subscription
//     (TestSubscribersAreToldBeforeWaitersWake).
//   - WaitFor is woken by changes, not by a clock: its condition is evaluated
//     once per new map, on a consistent View (TestWaitForIsWokenByChangesNotByPolling).
//   - The Client fails over on 502/503/504 and remembers the node that
//     answered; other answers are final (TestClientFailsOverWhenANodeKnowsNoLeader,
//     TestClientAnswersOtherThanUnavailableAreFinal).
package assignments
