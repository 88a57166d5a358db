package fakeec2

import (
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// NewClient returns a real SDK EC2 client for endpoint with static credentials.
// Pass func(o *ec2.Options){ o.Retryer = aws.NopRetryer{} } to see first-attempt errors.
func NewClient(endpoint, region string, optFns ...func(*ec2.Options)) *ec2.Client {
	opts := ec2.Options{
		Region:       region,
		BaseEndpoint: aws.String(endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIAFAKEEC2", "fake-secret", ""),
	}
	return ec2.New(opts, optFns...)
}

// Client is NewClient for the server's first listener (see Listen and Start).
func (s *Server) Client(optFns ...func(*ec2.Options)) *ec2.Client {
	return NewClient(s.Endpoint(), s.cfg.Region, optFns...)
}
