// Package faults is depbridge's fault suite (issue 5): real processes (the
// bridge binary, kube-apiserver and etcd, an in-process NATS server with
// JetStream and an in-process kfake Kafka broker), a driver that changes
// watched objects, consumers that record every CloudEvent, and faults: the
// bridge SIGKILLed at random moments, a broker stopped for 30 s, the API
// server restarted, relists forced by 410 Gone after etcd compaction, and
// the leader of two replicas killed.
//
// The suite is TestFaults in faults_test.go; its coverage rule is
// documented on coverage in ledger_test.go. `make test-faults` runs it and
// writes the results table to test/faults/results.md. The package has no
// code outside its tests.
package faults
