// kstatus: the status the kstatus library (sigs.k8s.io/cli-utils, what Flux and kpt use)
// computes for each Kubernetes object read from stdin, one JSON object per line; prints
// "<status> <message>" per line. Tests use it to check what GitOps tools would see.
package main

import (
	"bufio"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1024*1024), 64*1024*1024)
	for scanner.Scan() {
		line := scanner.Bytes()
		if len(line) == 0 {
			continue
		}
		object := &unstructured.Unstructured{}
		if err := object.UnmarshalJSON(line); err != nil {
			fmt.Printf("Error %s\n", err)
			continue
		}
		result, err := status.Compute(object)
		if err != nil {
			fmt.Printf("Error %s\n", err)
			continue
		}
		fmt.Printf("%s %s\n", result.Status, result.Message)
	}
}
