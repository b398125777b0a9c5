package dispatch

import "container/heap"

// jobQueue holds the jobs waiting for an agent of one route, highest
// priority first, then oldest (lowest Seq) first.
type jobQueue []*job

func (q jobQueue) Len() int { return len(q) }

func (q jobQueue) Less(i, j int) bool {
	if q[i].task.Priority != q[j].task.Priority {
		return q[i].task.Priority > q[j].task.Priority
	}
	return q[i].task.Seq < q[j].task.Seq
}

func (q jobQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}

func (q *jobQueue) Push(x any) {
	j := x.(*job)
	j.index = len(*q)
	*q = append(*q, j)
}

func (q *jobQueue) Pop() any {
	old := *q
	j := old[len(old)-1]
	old[len(old)-1] = nil
	j.index = -1
	*q = old[:len(old)-1]
	return j
}

// remove takes j out of q wherever it is.
func (q *jobQueue) remove(j *job) {
	if j.index >= 0 && j.index < len(*q) && (*q)[j.index] == j {
		heap.Remove(q, j.index)
	}
}
