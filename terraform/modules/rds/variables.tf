variable "name" {
  description = "Name of the Veza installation; used in resource names."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the database."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the DB subnet group."
  type        = list(string)
}

variable "client_security_group_id" {
  description = "Security group allowed to connect (the EKS cluster security group)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for storage, Performance Insights and the master password secret."
  type        = string
}

variable "major_version" {
  description = "PostgreSQL major version."
  type        = string
  default     = "17"
}

variable "instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.m6g.large"
}

variable "allocated_storage_gb" {
  description = "Initial storage in GiB (autoscaling up to five times this)."
  type        = number
  default     = 50
}

variable "database" {
  description = "Name of the database Veza uses."
  type        = string
  default     = "veza"
}

variable "username" {
  description = "Master user name."
  type        = string
  default     = "veza"
}

variable "backup_retention_days" {
  description = "Days of automated backups."
  type        = number
  default     = 14
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
