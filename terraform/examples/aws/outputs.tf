output "cluster_name" {
  description = "EKS cluster; `aws eks update-kubeconfig --name <this>`."
  value       = module.eks.cluster_name
}

output "database_address" {
  description = "Host name of the PostgreSQL instance."
  value       = module.rds.address
}

output "redis_endpoint" {
  description = "Primary endpoint of the Redis replication group."
  value       = module.redis.primary_endpoint
}

output "bucket" {
  description = "The platform's S3 bucket."
  value       = module.bucket.bucket
}

output "workers_role_arn" {
  description = "IAM role of the workers' ServiceAccounts."
  value       = module.workers_role.role_arn
}

output "platform_url" {
  description = "Public URL of the platform once DNS points at the Ingress."
  value       = "https://${var.host}"
}
